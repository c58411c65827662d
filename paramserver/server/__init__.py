"""The parameter server: thin gRPC servicer over network-free handlers and state."""
