"""benchmarks/common.py's helpers that need no GPU."""

from types import SimpleNamespace

from cpu_smoke import run_on_cpu  # noqa: F401  (puts benchmarks/ on the path)
from common import per_call_us  # noqa: E402


def test_per_call_us():
    # one kernel seen twice (two events of one name) adds up; host-only events (no device time)
    # are left out; largest first; older profilers name the field cuda_time_total
    events = [SimpleNamespace(key="reduce", device_time_total=10.0),
              SimpleNamespace(key="cudaLaunchKernel", device_time_total=0.0),
              SimpleNamespace(key="split", device_time_total=40.0),
              SimpleNamespace(key="reduce", device_time_total=6.0),
              SimpleNamespace(key="old", cuda_time_total=4.0)]
    assert per_call_us(events, 2) == {"split": 20.0, "reduce": 8.0, "old": 2.0}
    assert list(per_call_us(events, 2)) == ["split", "reduce", "old"]
