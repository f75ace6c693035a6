"""A typed client for the emulator's admin API (``/_emulator/...``, see :mod:`.control`).

admin = EmulatorAdmin("http://127.0.0.1:8787")
admin.add_fault("compute.instances.insert", mode="503", count=2)
admin.set_latency(profile="gce", time_scale=0.01)
admin.kill_vm("my-project", "us-central1-a", "master-1")
admin.fail_zone("us-central1-b"); admin.restore_zone("us-central1-b")
[c["method"] for c in admin.calls()]
"""

from __future__ import annotations

from typing import Any, Literal

import httpx

FaultMode = Literal["429", "503", "operation_error", "hang"]


class EmulatorAdminError(RuntimeError):
    def __init__(self, status: int, message: str):
        super().__init__(f"emulator admin API answered {status}: {message}")
        self.status = status


class EmulatorAdmin:
    def __init__(self, base_url: str, timeout: float = 30.0):
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> EmulatorAdmin:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, verb: str, path: str, json: Any = None, params: dict | None = None) -> dict:
        response = self._http.request(verb, f"/_emulator{path}", json=json, params=params)
        data = response.json() if response.content else {}
        if response.status_code >= 400:
            message = data.get("error", {}).get("message", response.text) if isinstance(data, dict) else data
            raise EmulatorAdminError(response.status_code, str(message))
        return data

    # --- health, call log -----------------------------------------------------------------------

    def health(self) -> dict:
        return self._call("GET", "/health")

    def calls(self, method: str | None = None) -> list[dict]:
        """Call-log entries (optionally of one API method id), oldest first."""
        return self._call("GET", "/calls", params={"method": method} if method else None)["calls"]

    def clear_calls(self) -> None:
        self._call("DELETE", "/calls")

    # --- faults ---------------------------------------------------------------------------------

    def add_fault(
        self,
        method: str,
        mode: FaultMode,
        count: int = 1,
        error_code: str | None = None,
        error_message: str | None = None,
        http_status: int | None = None,
    ) -> list[dict]:
        """The next ``count`` calls of ``method`` (e.g. ``compute.instances.insert``) fail as ``mode``."""
        spec: dict[str, Any] = {"method": method, "mode": mode, "count": count}
        if error_code:
            spec["errorCode"] = error_code
        if error_message:
            spec["errorMessage"] = error_message
        if http_status:
            spec["httpStatus"] = http_status
        return self._call("POST", "/faults", json=spec)["faults"]

    def faults(self) -> list[dict]:
        return self._call("GET", "/faults")["faults"]

    def clear_faults(self, method: str | None = None) -> int:
        """Drop pending faults (all, or one method's); returns how many hung operations were released."""
        return self._call("DELETE", "/faults", params={"method": method} if method else None)["releasedOperations"]

    # --- latency --------------------------------------------------------------------------------

    def latency(self) -> dict:
        return self._call("GET", "/latency")

    def set_latency(
        self, profile: str | None = None, time_scale: float | None = None, seconds: dict[str, float] | None = None
    ) -> dict:
        body: dict[str, Any] = {}
        if profile is not None:
            body["profile"] = profile
        if time_scale is not None:
            body["timeScale"] = time_scale
        if seconds:
            body["seconds"] = seconds
        return self._call("POST", "/latency", json=body)

    # --- VMs and zones --------------------------------------------------------------------------

    def vm(self, project: str, zone: str, name: str) -> dict:
        """Status, internalIP, externalIPs and the runtime's process state of one VM."""
        return self._call("GET", f"/instances/{project}/{zone}/{name}")

    def kill_vm(self, project: str, zone: str, name: str) -> dict:
        """Every process of the VM dies; GCE still reports it RUNNING."""
        return self._call("POST", f"/instances/{project}/{zone}/{name}/kill")

    def stop_vm(self, project: str, zone: str, name: str) -> dict:
        """Stop the VM at once, as instances.stop would (not in the call log)."""
        return self._call("POST", f"/instances/{project}/{zone}/{name}/stop")

    def fail_zone(self, zone: str, mode: Literal["partition", "kill"] | None = None) -> dict:
        """API calls to ``zone`` answer 503 until :meth:`restore_zone`, and its network is cut with
        its VMs running (``partition``, the namespaced network's default) or its VMs' processes
        die (``kill``, the loopback default)."""
        return self._call("POST", f"/zones/{zone}/fail", params={"mode": mode} if mode else None)

    def restore_zone(self, zone: str) -> dict:
        return self._call("POST", f"/zones/{zone}/restore")

    def failed_zones(self) -> list[str]:
        return self._call("GET", "/zones")["failed"]
