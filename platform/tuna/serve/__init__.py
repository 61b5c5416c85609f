"""Serving: the Triton model repository (`tuna export`), the local tritonserver (`tuna serve`) and the gRPC client (`tuna ask`)."""
