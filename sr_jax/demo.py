"""A CPU demo of the pipeline so far: generate -> tokens -> decode -> evaluate.

Run as `python -m sr_jax.demo`. It is a smoke test of the data side, not a
symbolic-regression result: no trained model ships yet (train one with
`python train.py --config configs/debug.py`).
"""

import numpy as np

from sr_jax import data, expressions, generator, tokens


def main(num_samples: int = 3, seed: int = 0) -> None:
  config = generator.GeneratorConfig()
  for index in range(num_samples):
    sample = generator.generate(config, seed, index)
    ids = tokens.encode_expression(sample.prefix)
    decoded = tokens.decode_expression(ids)
    error = np.max(np.abs(expressions.evaluate(decoded, sample.x) - sample.y)
                   / (np.abs(sample.y) + 1e-12))
    point_ids = data.tokenize_points([sample], sample.num_points)[0, 0]
    print(f"sample {index}: D={sample.input_dimension} N={sample.num_points} "
          f"unary={sample.num_unary_ops} binary={sample.num_binary_ops} "
          f"constants={sample.num_constants} rejections={sample.num_rejections}")
    print(f"  f(x)     = {expressions.to_infix(sample.prefix)}")
    print(f"  latex    = {expressions.to_latex(sample.prefix)}")
    print(f"  target   = {' '.join(tokens.DECODER_VOCAB.decode_ids(ids))}")
    print(f"  point 0  = {' '.join(tokens.ENCODER_VOCAB.decode_ids(point_ids))}")
    print(f"  decoded tokens reproduce y to {error:.1e} relative error "
          "(constants have <= 3 digits, so the tokens keep them exactly)\n")


if __name__ == "__main__":
  main()
