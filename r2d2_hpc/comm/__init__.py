"""The wire between ranks: the message codec and catalog, endpoints (MPI pools and the
in-memory twin), rank -> role topology, and gradient averaging over learners.

Import from the modules themselves.
"""
