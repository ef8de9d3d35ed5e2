"""Generation: token tables, the output grammar and its engines, the constrained decode loop,
the engine every generating path goes through, and dispatch of decorated functions."""
