"""Real transports for volumes and decoder outputs: Lab Streaming Layer, ZeroMQ."""
