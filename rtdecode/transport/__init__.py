"""Real transports for volumes and decoder outputs: Lab Streaming Layer, ZeroMQ."""

from .zmq import ZmqPublisher, ZmqSubscriber, ZmqVolumeSink, ZmqVolumeSource

__all__ = ["ZmqPublisher", "ZmqSubscriber", "ZmqVolumeSink", "ZmqVolumeSource"]
