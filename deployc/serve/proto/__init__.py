"""Generated gRPC modules of grpc_predict_v2.proto (see its header for the protoc command)."""
