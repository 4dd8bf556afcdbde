"""Tools over a Backend and a head: generate (the one loop: dense, fast, exact), and what is built
on it."""
