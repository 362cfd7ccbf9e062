"""The asynchronous twin: the same calls as :class:`sandgate.Sandgate`,
awaitable. Each runs the synchronous client on a worker thread
(``asyncio.to_thread``), so the two can never disagree. A cancelled call
stops waiting, but the request it made runs to its end on the server; at
most as many calls run at once as the default executor has threads."""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Dict, List, Literal, Optional, Tuple, Union

from .client import (
    AccessRequest,
    CreateSandboxBaseParams,
    NetworkEvent,
    ExecuteResponse,
    Explanation,
    Flow,
    FlowLog,
    Grant,
    HttpRule,
    NetworkTestResult,
    Sandbox,
    Sandgate,
    Secret,
    Secrets,
    Snapshot,
    Snapshots,
    TransferUsage,
)


class AsyncProcess:
    """Commands in a sandbox, awaitable."""

    def __init__(self, sandbox: Sandbox) -> None:
        self._sandbox = sandbox

    async def exec(
        self,
        command: str,
        cwd: Optional[str] = None,
        env: Optional[Dict[str, str]] = None,
        timeout: Optional[float] = None,
    ) -> ExecuteResponse:
        """See :meth:`sandgate.client.Process.exec`."""
        return await asyncio.to_thread(self._sandbox.process.exec, command, cwd, env, timeout)


class AsyncNetwork:
    """A sandbox's network, awaitable."""

    def __init__(self, sandbox: Sandbox) -> None:
        self._sandbox = sandbox

    async def test(self, targets: Optional[List[str]] = None) -> NetworkTestResult:
        """See :meth:`sandgate.client.Network.test`."""
        return await asyncio.to_thread(self._sandbox.network.test, targets)

    async def explain(self, dest: str) -> Explanation:
        """See :meth:`sandgate.client.Network.explain`."""
        return await asyncio.to_thread(self._sandbox.network.explain, dest)

    async def grant(self, target: str, ttl_seconds: int, reason: Optional[str] = None) -> Grant:
        """See :meth:`sandgate.client.Network.grant`."""
        return await asyncio.to_thread(self._sandbox.network.grant, target, ttl_seconds, reason)

    async def grants(self) -> List[Grant]:
        """See :meth:`sandgate.client.Network.grants`."""
        return await asyncio.to_thread(self._sandbox.network.grants)

    async def transfer_usage(self) -> Optional[TransferUsage]:
        """See :meth:`sandgate.client.Network.transfer_usage`."""
        return await asyncio.to_thread(self._sandbox.network.transfer_usage)

    async def revoke(self, grant: Union[Grant, str]) -> None:
        """See :meth:`sandgate.client.Network.revoke`."""
        await asyncio.to_thread(self._sandbox.network.revoke, grant)

    async def events(self, follow: bool = False) -> AsyncIterator[NetworkEvent]:
        """See :meth:`sandgate.client.Network.events`; each event is read
        on a worker thread (``async for event in ...``)."""
        it = await asyncio.to_thread(self._sandbox.network.events, follow)

        def step() -> Optional[NetworkEvent]:
            return next(it, None)

        while True:
            event = await asyncio.to_thread(step)
            if event is None:
                return
            yield event

    async def flows(self, since: Optional[int] = None, limit: Optional[int] = None) -> FlowLog:
        """See :meth:`sandgate.client.Network.flows`."""
        return await asyncio.to_thread(self._sandbox.network.flows, since, limit)

    async def follow_flows(
        self, since: Optional[int] = None, limit: Optional[int] = None
    ) -> AsyncIterator[Flow]:
        """See :meth:`sandgate.client.Network.follow_flows`; each record is
        read on a worker thread (``async for flow in ...``)."""
        it = await asyncio.to_thread(self._sandbox.network.follow_flows, since, limit)

        def step() -> Optional[Flow]:
            return next(it, None)

        while True:
            flow = await asyncio.to_thread(step)
            if flow is None:
                return
            yield flow

    async def requests(
        self, follow: bool = False, state: Optional[str] = None
    ) -> AsyncIterator[AccessRequest]:
        """See :meth:`sandgate.client.Network.requests`; each request is
        read on a worker thread (``async for request in ...``)."""
        it = await asyncio.to_thread(self._sandbox.network.requests, follow, state)

        def step() -> Optional[AccessRequest]:
            return next(it, None)

        while True:
            request = await asyncio.to_thread(step)
            if request is None:
                return
            yield request

    async def approve(
        self, request: Union[AccessRequest, str], ttl_seconds: Optional[int] = None
    ) -> AccessRequest:
        """See :meth:`sandgate.client.Network.approve`."""
        return await asyncio.to_thread(self._sandbox.network.approve, request, ttl_seconds)

    async def deny(self, request: Union[AccessRequest, str]) -> AccessRequest:
        """See :meth:`sandgate.client.Network.deny`."""
        return await asyncio.to_thread(self._sandbox.network.deny, request)


class AsyncSandbox:
    """A sandbox; its attributes are those of :class:`sandgate.Sandbox`."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sync = sandbox
        self.process = AsyncProcess(sandbox)
        self.network = AsyncNetwork(sandbox)

    @property
    def id(self) -> str:
        """Its id."""
        return self.sync.id

    @property
    def name(self) -> str:
        """Its name."""
        return self.sync.name

    @property
    def mode(self) -> str:
        """Its effective network mode."""
        return self.sync.mode

    @property
    def effective_network(self) -> Dict[str, Any]:
        """Its effective network."""
        return self.sync.effective_network

    @property
    def state(self) -> str:
        """Its state."""
        return self.sync.state

    @property
    def snapshot(self) -> str:
        """Its snapshot."""
        return self.sync.snapshot

    @property
    def runtime_class(self) -> str:
        """The OCI runtime it runs under: ``runc`` or ``runsc`` (gVisor)."""
        return self.sync.runtime_class

    @property
    def organization_id(self) -> str:
        """Its organization."""
        return self.sync.organization_id

    @property
    def env(self) -> Dict[str, str]:
        """The environment of its commands."""
        return self.sync.env

    @property
    def network_block_all(self) -> bool:
        """Stored ``networkBlockAll``."""
        return self.sync.network_block_all

    @property
    def network_allow_list(self) -> Optional[str]:
        """Stored ``networkAllowList``."""
        return self.sync.network_allow_list

    @property
    def domain_allow_list(self) -> Optional[str]:
        """Stored ``domainAllowList``."""
        return self.sync.domain_allow_list

    @property
    def network_deny_list(self) -> Optional[str]:
        """Stored ``networkDenyList``."""
        return self.sync.network_deny_list

    @property
    def domain_deny_list(self) -> Optional[str]:
        """Stored ``domainDenyList``."""
        return self.sync.domain_deny_list

    @property
    def essential_services(self) -> bool:
        """Stored ``essentialServices``."""
        return self.sync.essential_services

    @property
    def egress_mbps(self) -> Optional[int]:
        """Stored ``egressMbps``."""
        return self.sync.egress_mbps

    @property
    def egress_budget_mbps(self) -> Optional[int]:
        """See :attr:`sandgate.Sandbox.egress_budget_mbps`."""
        return self.sync.egress_budget_mbps

    @property
    def max_connections(self) -> Optional[int]:
        """Stored ``maxConnections``."""
        return self.sync.max_connections

    @property
    def new_connections_per_second(self) -> Optional[int]:
        """Stored ``newConnectionsPerSecond``."""
        return self.sync.new_connections_per_second

    @property
    def connection_budget(self) -> Tuple[int, int]:
        """See :attr:`sandgate.Sandbox.connection_budget`."""
        return self.sync.connection_budget

    @property
    def transfer_quota_mib(self) -> Optional[int]:
        """Stored ``transferQuotaMiB``."""
        return self.sync.transfer_quota_mib

    @property
    def transfer_quota(self) -> Optional[Tuple[int, int]]:
        """See :attr:`sandgate.Sandbox.transfer_quota`."""
        return self.sync.transfer_quota

    @property
    def network_approvals(self) -> bool:
        """Stored ``networkApprovals``."""
        return self.sync.network_approvals

    @property
    def approval_hold_seconds(self) -> int:
        """Stored ``approvalHoldSeconds``."""
        return self.sync.approval_hold_seconds

    @property
    def http_rules(self) -> Optional[List[HttpRule]]:
        """Stored ``httpRules`` (``None``: none)."""
        return self.sync.http_rules

    @property
    def secrets(self) -> List[str]:
        """The names of the secrets it holds (``env`` holds their
        placeholders)."""
        return self.sync.secrets

    @property
    def created_at(self) -> str:
        """When it was made."""
        return self.sync.created_at

    @property
    def updated_at(self) -> str:
        """When its settings last changed."""
        return self.sync.updated_at

    async def update_network_settings(
        self,
        network_block_all: Optional[bool] = None,
        network_allow_list: Optional[str] = None,
        domain_allow_list: Optional[str] = None,
        network_deny_list: Optional[str] = None,
        domain_deny_list: Optional[str] = None,
        essential_services: Optional[bool] = None,
        egress_mbps: Union[int, Literal["default"], None] = None,
        max_connections: Union[int, Literal["default"], None] = None,
        new_connections_per_second: Union[int, Literal["default"], None] = None,
        network_approvals: Optional[bool] = None,
        approval_hold_seconds: Optional[int] = None,
        transfer_quota_mib: Union[int, Literal["default"], None] = None,
        http_rules: Optional[List[HttpRule]] = None,
    ) -> None:
        """See :meth:`sandgate.Sandbox.update_network_settings`."""
        await asyncio.to_thread(
            self.sync.update_network_settings,
            network_block_all,
            network_allow_list,
            domain_allow_list,
            network_deny_list,
            domain_deny_list,
            essential_services,
            egress_mbps,
            max_connections,
            new_connections_per_second,
            network_approvals,
            approval_hold_seconds,
            transfer_quota_mib,
            http_rules,
        )

    async def refresh(self) -> None:
        """Reloads the sandbox from the server."""
        await asyncio.to_thread(self.sync.refresh)

    async def delete(self) -> None:
        """Deletes the sandbox."""
        await asyncio.to_thread(self.sync.delete)


class AsyncSecrets:
    """The organization's secrets, awaitable."""

    def __init__(self, secrets: Secrets) -> None:
        self._secrets = secrets

    async def create(self, name: str, value: str, hosts: List[str]) -> Secret:
        """See :meth:`sandgate.client.Secrets.create`."""
        return await asyncio.to_thread(self._secrets.create, name, value, hosts)

    async def list(self) -> List[Secret]:
        """See :meth:`sandgate.client.Secrets.list`."""
        return await asyncio.to_thread(self._secrets.list)

    async def delete(self, secret: Union[Secret, str]) -> None:
        """See :meth:`sandgate.client.Secrets.delete`."""
        await asyncio.to_thread(self._secrets.delete, secret)


class AsyncSnapshots:
    """The snapshots, awaitable."""

    def __init__(self, snapshots: Snapshots) -> None:
        self._snapshots = snapshots

    async def create(self, name: str, image: str, timeout: Optional[float] = None) -> Snapshot:
        """See :meth:`sandgate.client.Snapshots.create`."""
        return await asyncio.to_thread(self._snapshots.create, name, image, timeout)

    async def upload(self, name: str, archive: str, timeout: Optional[float] = None) -> Snapshot:
        """See :meth:`sandgate.client.Snapshots.upload`."""
        return await asyncio.to_thread(self._snapshots.upload, name, archive, timeout)

    async def list(self) -> List[Snapshot]:
        """See :meth:`sandgate.client.Snapshots.list`."""
        return await asyncio.to_thread(self._snapshots.list)

    async def delete(self, snapshot: Union[Snapshot, str]) -> None:
        """See :meth:`sandgate.client.Snapshots.delete`."""
        await asyncio.to_thread(self._snapshots.delete, snapshot)


class AsyncSandgate:
    """The asynchronous client; configured as :class:`sandgate.Sandgate`."""

    def __init__(
        self,
        api_url: Optional[str] = None,
        api_key: Optional[str] = None,
        timeout: float = 120.0,
        max_retries: int = 2,
    ) -> None:
        self.sync = Sandgate(api_url, api_key, timeout, max_retries)

    @property
    def secrets(self) -> AsyncSecrets:
        """The organization's secrets: ``create``, ``list``, ``delete``."""
        return AsyncSecrets(self.sync.secrets)

    @property
    def snapshots(self) -> AsyncSnapshots:
        """The snapshots: ``create`` (from an OCI image), ``list``, ``delete``."""
        return AsyncSnapshots(self.sync.snapshots)

    async def create(
        self, params: Optional[CreateSandboxBaseParams] = None, timeout: Optional[float] = None
    ) -> AsyncSandbox:
        """See :meth:`sandgate.Sandgate.create`."""
        return AsyncSandbox(await asyncio.to_thread(self.sync.create, params, timeout))

    async def get(self, sandbox_id_or_name: str) -> AsyncSandbox:
        """See :meth:`sandgate.Sandgate.get`."""
        return AsyncSandbox(await asyncio.to_thread(self.sync.get, sandbox_id_or_name))

    async def list(self) -> List[AsyncSandbox]:
        """See :meth:`sandgate.Sandgate.list`."""
        return [AsyncSandbox(s) for s in await asyncio.to_thread(self.sync.list)]

    async def delete(self, sandbox: Union[AsyncSandbox, Sandbox, str]) -> None:
        """See :meth:`sandgate.Sandgate.delete`."""
        target: Union[Sandbox, str] = sandbox.sync if isinstance(sandbox, AsyncSandbox) else sandbox
        await asyncio.to_thread(self.sync.delete, target)
