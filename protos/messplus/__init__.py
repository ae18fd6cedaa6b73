"""messplus: an SLA-keeping LLM router (MESS+) beside NVIDIA Triton."""
__version__ = "0.1.0"
