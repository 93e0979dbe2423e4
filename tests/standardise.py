"""A formula over x rewritten over the standardised inputs the pipeline hands over."""


def standardised(prefix, mean, scale):
  """The formula on standardised inputs z: x_k = mean_k + scale_k * z_k."""
  out = []
  for token in prefix:
    if isinstance(token, str) and token.startswith("x_"):
      k = int(token[2:])
      out += ["add", float(mean[k]), "mul", float(scale[k]), token]
    else:
      out.append(token)
  return out
