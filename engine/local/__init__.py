"""The local backend: a pool of worker processes on this machine, each driving a CurlMulti."""
