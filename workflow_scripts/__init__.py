"""oofline workflow steps: one module per step, each a small CLI over a pure, tested core."""
