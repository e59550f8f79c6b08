"""Every hook a Herd plugin can implement: the whole plugin contract, one docstring each.

Plugins are found through the ``herd`` entry point group (entry name ``<kind>-<name>``, e.g.
``signal-thermal``) and implement hooks with ``herd_kernel.hookimpl``. Registration hooks are
called once at start-up and return objects the kernel then calls directly, so pluggy never sits
on the hot path. Results are flattened in plugin order; nothing is ``firstresult``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from herd_kernel.api import (
        Backend,
        DemoFleet,
        Discovery,
        HealthCheck,
        LanePolicy,
        NodeAPI,
        Panel,
        RouteDef,
        RouterAPI,
        Sensor,
        Shaper,
        Signal,
    )
    from herd_kernel.config import Config, Setting
    from herd_kernel.models import Trace

hookspec = pluggy.HookspecMarker("herd")
hookimpl = pluggy.HookimplMarker("herd")


class HerdSpec:
    """The hook specifications. Each method documents when it is called and how results combine."""

    @hookspec
    def herd_settings(self) -> Sequence[Setting]:
        """Declare the settings this plugin reads.

        Called once, before configuration is resolved, in the router and in the node agent. Return
        ``herd_kernel.config.Setting`` records (env name, type, default, help, scope). The kernel
        reads each from the environment (``FLEET_*`` / ``FLEET_NODE_*``), and every later hook gets
        the resolved ``Config``. Two plugins declaring the same variable is a start-up error.
        """

    @hookspec
    def herd_signals(self, config: Config) -> Sequence[Signal]:
        """Register scoring signals (router).

        Called once at router start. Return ``herd_kernel.api.Signal`` objects; every request's
        surviving candidates are scored by every registered signal and the weighted sum picks the
        node. Signal names must be unique across plugins.
        """

    @hookspec
    def herd_backends(self, config: Config) -> Sequence[Backend]:
        """Register backends (router and node agent).

        Called once at start. On the router, each backend's ``routes(services)`` adds its HTTP
        routes; two backends claiming the same method and path is a start-up error. On the node
        agent, each backend's ``probe(ctx)`` contributes to every heartbeat.
        """

    @hookspec
    def herd_discovery(self, config: Config) -> Sequence[Discovery]:
        """Register discovery mechanisms (router announces, node agent searches).

        Called once at start. The router calls ``announce`` on every registered discovery; a node
        started without a router URL calls ``find_router`` on each in turn until one answers.
        """

    @hookspec
    def herd_health_checks(self, config: Config) -> Sequence[HealthCheck]:
        """Register health checks (router).

        Called once at start. The health engine evaluates every check against a fleet snapshot
        and shows the findings on the dashboard and at ``/dashboard/api/health``.
        """

    @hookspec
    def herd_dashboard_panels(self, config: Config) -> Sequence[Panel]:
        """Register dashboard tabs (router).

        Called once at start. Tabs are shown in ``(order, id)`` order; each panel's routes are
        mounted under ``/dashboard/api/<panel id>/``. Panel ids must be unique.
        """

    @hookspec
    def herd_node_sensors(self, config: Config) -> Sequence[Sensor]:
        """Register node sensors (node agent).

        Called once at agent start. Before every heartbeat each sensor's ``read`` runs (in
        ``order``, concurrently, each with a timeout) and its fragment is merged into the payload.
        """

    @hookspec
    def herd_demo_fleet(self, config: Config) -> Sequence[DemoFleet]:
        """Offer a simulated fleet for ``herd --demo`` (router).

        Called only when the router starts with ``--demo``, after it listens. Return
        ``herd_kernel.api.DemoFleet`` objects; the router starts the one fleet on offer (none is
        a clear error, several are an error naming them: choose with ``--plugins``).
        """

    @hookspec
    def herd_startup(self, services: RouterAPI | NodeAPI) -> Any:
        """The router (or agent) has started: start background work here.

        Called once as the router starts, before it serves its first request, with the router's
        ``RouterAPI`` (in the node agent: once it has found its router, with its ``NodeAPI``;
        ``services.side`` tells which).
        May return
        an awaitable, which is awaited ("await me maybe"). Exceptions are logged with the plugin's
        name and do not stop the router.
        """

    @hookspec
    def herd_shutdown(self, services: RouterAPI | NodeAPI) -> Any:
        """The router (or agent) is stopping: stop background work and close resources.

        Called once, in reverse plugin order. May return an awaitable, which is awaited.
        """

    @hookspec
    def herd_routes(self, services: RouterAPI) -> Sequence[RouteDef]:
        """Serve HTTP routes on the router that are not a client API (router).

        Called once as the app is built. Return ``herd_kernel.api.RouteDef`` objects, e.g.
        analytics under ``/dashboard/api/``. ``RouteDef.access`` says who may call one: ``read``
        and ``write`` get the ``/fleet/*`` guard (the owner, the admin key, or for reads a client
        key; writes need a JSON body and no foreign origin); ``public`` routes need a client key
        once FLEET_API_KEYS is set. A path already taken by another plugin or the kernel is an
        error.
        """

    @hookspec
    def herd_request_finished(self, trace: Trace, services: RouterAPI) -> None:
        """A proxied request has finished (completed, failed or abandoned by its client).

        Called once per request, after the response has been sent, with the frozen ``Trace`` and
        the ``RouterAPI`` of the router that served it (a process may run several). Must be quick
        and must not block: hand work to a queue or task.
        """

    @hookspec
    def herd_node_status_changed(self, node_id: str, old: str | None, new: str) -> None:
        """A node's status changed (``None`` -> ``online`` when first seen; ``online`` ->
        ``degraded`` -> ``offline`` as heartbeats stop; ``offline`` -> ``online`` on return;
        ``None`` -> ``pending`` when a node elsewhere waits for admission; ``removed`` when the
        owner revokes a node or a long-silent one is forgotten).

        Called on the router's event loop right after the change; must be quick.
        """

    @hookspec
    def herd_lane_policies(self, config: Config) -> Sequence[LanePolicy]:
        """Register lane policies: how the queue tunes itself (router).

        Called once at router start. Return ``herd_kernel.api.LanePolicy`` objects. The queue
        keeps the mechanism (lanes, slots, waiting, the holding queue, the pump, the reaper) and
        calls each policy's callbacks directly, in plugin order: ``limit`` narrows a lane's
        concurrency, ``finished`` learns from each request, ``waiting``/``pump``/``tick`` may ask
        the ``QueueView`` to ``warm`` a model or ``move`` a waiter. Callbacks are optional (only
        those a policy defines are called) and must be quick; one that raises is logged once and
        skipped. Policy names must be unique.
        """

    @hookspec
    def herd_request_shapers(self, config: Config) -> Sequence[Shaper]:
        """Register request shapers (router).

        Called once at router start. Return ``herd_kernel.api.Shaper`` objects (return none when
        a setting turns the feature off: an unregistered shaper costs nothing). Before scoring,
        shapers may substitute the model or provision it; once a node is chosen, they return
        ``Change`` records for the body sent there. The kernel applies every record and announces
        it in a response header and the trace; a shaper that raises is logged once and skipped.
        Shaper names must be unique across plugins.
        """
