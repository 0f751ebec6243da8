"""This process's memory as the kernel reports it (Linux ``/proc/self/status``): what the index
tool prints in its summary and the scale benchmark measures, read one way."""

from __future__ import annotations

__all__ = ["process_memory_bytes"]


def process_memory_bytes(field: str) -> int:
    """A size field of ``/proc/self/status`` in bytes ("VmRSS": resident now, "VmHWM": peak
    resident); 0 where ``/proc`` does not exist (not Linux).

    Raises:
        KeyError: the file has no such field.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024  # reported in kB
    except FileNotFoundError:
        return 0
    raise KeyError(f"/proc/self/status has no field {field!r}")
