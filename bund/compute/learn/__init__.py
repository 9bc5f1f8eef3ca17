"""Learning maths for joint models: metrics, WOE/IV screening, the vertical LR reference.

Pure like the rest of ``compute``: functions over numpy arrays and ints, no network, disk or
clock. The numpy random generators used here only order batches and split rows from a public
seed that every party knows; they never make keys, masks or noise.
"""
