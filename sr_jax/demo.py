"""A CPU demo of the pipeline so far: expressions -> tokens -> evaluation -> decoding.

Run as `python -m sr_jax.demo`. It is a smoke test of the language and tokens, not a
symbolic-regression result (no trained model ships yet).
"""

import numpy as np
import sympy

from sr_jax import expressions, tokens

_FORMULAS = (
    "exp(-x_0**2/2)/sqrt(2*pi)",  # Feynman I.6.2a
    "x_0*x_1/(x_2**2 + 1)",
    "3*x_0 - 2*x_0*x_1 - x_0**2",  # Strogatz lv1
)


def main() -> None:
  rng = np.random.default_rng(0)
  symbols = expressions.default_symbols(3)
  for text in _FORMULAS:
    prefix = expressions.from_sympy(sympy.sympify(text, locals={s.name: s for s in symbols}),
                                    symbols)
    ids = tokens.encode_expression(prefix)
    words = tokens.DECODER_VOCAB.decode_ids(ids)
    x = rng.normal(size=(200, 3))
    y = expressions.evaluate(prefix, x)
    point_words = tokens.ENCODER_VOCAB.decode_ids(
        tokens.encode_floats(np.concatenate([x[0], y[:1]])).ravel())
    decoded = tokens.decode_expression(ids)  # constants rounded to 4 digits
    print(f"formula : {text}")
    print(f"infix   : {expressions.to_infix(prefix)}")
    print(f"latex   : {expressions.to_latex(prefix)}")
    print(f"tokens  : {' '.join(words)}  ({len(ids)} ids)")
    print(f"decoded : {expressions.to_infix(decoded)}")
    print(f"point 0 : {' '.join(point_words)}")
    print(f"y[:3]   : {np.array2string(y[:3], precision=4)}\n")


if __name__ == "__main__":
  main()
