"""`videomla serve`: many live streams of one model, batched by cohort, watched and steered in the browser."""

from .scheduler import HEADER, FrameQueue, LiveStream, Scheduler, ServerFull

__all__ = ["HEADER", "FrameQueue", "LiveStream", "Scheduler", "ServerFull"]
