"""The gRPC layer: the only server code that imports grpclib, betterproto or the generated
``sandbox.v1`` code (services, wire checks, conversions, the one error mapper)."""
