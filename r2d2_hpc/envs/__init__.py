"""Vectorised environments (no MPI): the protocol, CartPole and the counter fake, Atari-57
through ale-py, the reference scores, and the factory that picks one from the config.
Import from the modules themselves."""
