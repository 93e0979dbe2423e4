"""A formula over x rewritten over the standardised inputs the pipeline hands over."""


def standardised(prefix, mean, scale, columns=None):
  """The formula on standardised inputs z: x_c = mean_k + scale_k * z_k, where z_k shows
  feature c = columns[k] (default: c = k)."""
  position = {int(c): k for k, c in enumerate(range(len(mean)) if columns is None else columns)}
  out = []
  for token in prefix:
    if isinstance(token, str) and token.startswith("x_"):
      k = position[int(token[2:])]
      out += ["add", float(mean[k]), "mul", float(scale[k]), f"x_{k}"]
    else:
      out.append(token)
  return out
