"""Helpers below everything else: progress a terminal and a log file read well, and the allocator setting
that keeps freed buffers (util.runtime).
"""
