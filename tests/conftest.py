import torch

# Tests are tiny; more threads only contend on small CI machines.
torch.set_num_threads(1)
