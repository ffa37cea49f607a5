"""The rebalancer's HTTP endpoints (under ``/v1/rebalance``).

Reads need the readonly role, every action the admin role; all are in the
``"rebalance"`` rate-limit group.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Literal

import msgspec
from pydantic import BaseModel, ConfigDict, Field, create_model

from lightningd_py.web import ApiError, ApiRequest, Role, RouteRegistry

from .engine import RebalanceError
from .policy import LifecycleAction, execute_lifecycle, lifecycle_recommendations
from .service import ConfigRejected, TooSoon
from .settings import RebalancerSettings

if TYPE_CHECKING:
    from .service import RebalancerService

__all__ = ["ConfigPatch", "ExecuteRequest", "LifecycleRequest", "register_routes"]

GROUP = "rebalance"


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ExecuteRequest(_Body):
    """Body of POST /v1/rebalance/execute. Leave out channels or the amount to take them
    from the top recommendation (or the best partner of the channel given)."""

    outgoing_chan_id: int | None = Field(None, ge=1, description="Channel with surplus to pay out through.")
    incoming_chan_id: int | None = Field(None, ge=1, description="Depleted channel to pay back in through.")
    amount_sat: int | None = Field(None, ge=1, description="What to move (halved on retries).")
    max_fee_ppm: int | None = Field(
        None, ge=0, le=1_000_000, description="Overrides max_fee_ppm for this run."
    )
    dry_run: bool | None = Field(None, description="Plan only; defaults to the dry_run setting.")
    ignore_economics: bool = Field(False, description="Skip the economic check for this run.")


class DryRunQuery(_Body):
    dry_run: bool | None = None


class HistoryQuery(_Body):
    limit: int = Field(50, ge=1, le=500)
    before: float | None = Field(None, description="Only runs created before this unix time.")


class LifecycleRequest(_Body):
    """Body of POST /v1/rebalance/lifecycle/execute: one current recommendation."""

    action: Literal["close", "open"]
    target: str = Field(description="The channel point to close or the node public key to open to.")


def _patch_model() -> type[BaseModel]:
    # Every setting optional; nested tables are merged key by key and validated whole.
    fields: dict[str, Any] = {}
    for name, info in RebalancerSettings.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            fields[name] = (dict[str, Any] | None, Field(None, description=info.description))
        else:
            fields[name] = (Any, Field(None, description=info.description))
    return create_model(  # type: ignore[call-overload, no-any-return]
        "RebalancerConfigPatch", __config__=ConfigDict(extra="forbid"), **fields
    )


#: Body of PUT /v1/rebalance/config: the settings to change (others keep their values).
ConfigPatch = _patch_model()


def _out(value: Any) -> Any:
    return msgspec.to_builtins(value)


def _rebalance_error(exc: RebalanceError) -> ApiError:
    return ApiError(exc.status, exc.code, exc.message, exc.field)


def register_routes(service: RebalancerService, router: RouteRegistry) -> None:
    """Declare every endpoint on ``router``."""

    async def recommendations(req: ApiRequest) -> Any:
        rec = await service.engine.recommendations()
        return {"channels": _out(rec["channels"]), "rebalances": _out(rec["rebalances"])}

    async def execute(req: ApiRequest) -> Any:
        body: ExecuteRequest = req.body
        try:
            result = await service.engine.execute(
                outgoing_chan_id=body.outgoing_chan_id,
                incoming_chan_id=body.incoming_chan_id,
                amount_sat=body.amount_sat,
                dry_run=body.dry_run,
                max_fee_ppm=body.max_fee_ppm,
                ignore_economics=body.ignore_economics,
            )
        except RebalanceError as exc:
            raise _rebalance_error(exc) from None
        return _out(result)

    async def auto(req: ApiRequest) -> Any:
        query: DryRunQuery = req.query
        try:
            result = await service.api_round(query.dry_run)
        except TooSoon as exc:
            raise ApiError(
                429,
                "too_soon",
                f"an automatic round ran less than auto_min_interval "
                f"({service.settings.auto_min_interval:g} s) ago",
                headers={"Retry-After": str(max(1, round(exc.retry_after)))},
            ) from None
        return {**_out(result), "fees_msat": result.fees_msat}

    async def history(req: ApiRequest) -> Any:
        query: HistoryQuery = req.query
        await service.ledger.store.flush()
        return {"rebalances": await service.ledger.history(query.limit, query.before)}

    async def budget(req: ApiRequest) -> Any:
        state = await service.ledger.budget(service.settings.daily_budget_msat)
        return {**state.as_dict(), "window_seconds": 86400}

    async def get_config(req: ApiRequest) -> Any:
        return service.effective()

    async def put_config(req: ApiRequest) -> Any:
        patch = req.body.model_dump(exclude_unset=True)
        try:
            await service.update_config(patch)
        except ConfigRejected as exc:
            key, message = exc.problems[0] if exc.problems else ("", str(exc))
            field = f"body.{key}" if key else "body"
            raise ApiError(400, "invalid_config", f"{key or 'body'}: {message}", field) from None
        return service.effective()

    async def scheduler_state(req: ApiRequest) -> Any:
        return {
            "running": service.scheduler_running,
            "interval": service.settings.scheduler.interval,
            "last_round": service.snapshot.last_round or None,
            "round_in_progress": service.snapshot.round_in_progress,
        }

    async def scheduler_start(req: ApiRequest) -> Any:
        await service.set_scheduler(True)
        return await scheduler_state(req)

    async def scheduler_stop(req: ApiRequest) -> Any:
        await service.set_scheduler(False)
        return await scheduler_state(req)

    async def fee_policy_preview(req: ApiRequest) -> Any:
        return {"channels": await service.fee_policy_preview()}

    async def fee_policy_apply(req: ApiRequest) -> Any:
        query: DryRunQuery = req.query
        changes = await service.run_fee_policy(query.dry_run)
        return {"changes": _out(changes)}

    async def fee_policy_history(req: ApiRequest) -> Any:
        query: HistoryQuery = req.query
        return {"changes": await service.ledger.fee_changes(query.limit)}

    async def lifecycle(req: ApiRequest) -> Any:
        actions = await lifecycle_recommendations(service.daemon, service.ledger, service.settings)
        return {"enabled": service.settings.lifecycle.enabled, "actions": _out(actions)}

    async def lifecycle_execute(req: ApiRequest) -> Any:
        body: LifecycleRequest = req.body
        if not service.settings.lifecycle.enabled:
            raise ApiError(
                409, "lifecycle_disabled", "channel lifecycle actions are off (lifecycle.enabled = false)"
            )
        actions = await lifecycle_recommendations(service.daemon, service.ledger, service.settings)
        match: LifecycleAction | None = next(
            (a for a in actions if a.action == body.action and a.target == body.target.strip().lower()), None
        )
        if match is None:
            raise ApiError(
                409,
                "not_recommended",
                f"{body.action} {body.target} is not a current recommendation",
                "target",
            )
        return await execute_lifecycle(service.daemon, service.ledger, service.settings, match)

    async def backup(req: ApiRequest) -> Any:
        b = service.settings.backup
        last = service.snapshot.last_backup_time
        return {
            "enabled": b.enabled,
            "path": str(b.path),
            "keep": b.keep,
            "last_backup_time": last or None,
            "age_seconds": round(time.time() - last, 3) if last else None,
        }

    # (method, path, handler, role, group, extra): runs are in the tightly limited
    # "rebalance" group, reads and settings in "general".
    table: list[tuple[str, str, Any, Role, str, dict[str, Any]]] = [
        (
            "GET",
            "/recommendations",
            recommendations,
            "readonly",
            "general",
            {"summary": "Each channel's balance advice and the rebalances a round would run"},
        ),
        (
            "POST",
            "/execute",
            execute,
            "admin",
            GROUP,
            {
                "body": ExecuteRequest,
                "responses": {404: "No such open channel", 409: "The rebalance cannot start (see the code)"},
                "summary": "Run one rebalance (a given pair and amount, or the top recommendation)",
            },
        ),
        (
            "POST",
            "/auto",
            auto,
            "admin",
            GROUP,
            {
                "query": DryRunQuery,
                "responses": {429: "A round ran too recently"},
                "summary": "Run one automatic round now (at most once per auto_min_interval)",
            },
        ),
        (
            "GET",
            "/history",
            history,
            "readonly",
            "general",
            {
                "query": HistoryQuery,
                "summary": "Past rebalances, newest first, with each attempt's amount, route, fee and result",
            },
        ),
        (
            "GET",
            "/budget",
            budget,
            "readonly",
            "general",
            {"summary": "The rolling 24-hour fee budget: limit, spent, reserved, remaining"},
        ),
        (
            "GET",
            "/config",
            get_config,
            "readonly",
            "general",
            {"summary": "The rebalancer settings in force"},
        ),
        (
            "PUT",
            "/config",
            put_config,
            "admin",
            "general",
            {
                "body": ConfigPatch,
                "summary": "Change settings: validated, applied at once and saved to the overrides file",
            },
        ),
        (
            "GET",
            "/scheduler",
            scheduler_state,
            "readonly",
            "general",
            {"summary": "Whether the scheduler runs"},
        ),
        (
            "POST",
            "/scheduler/start",
            scheduler_start,
            "admin",
            "general",
            {"summary": "Start the scheduler (persisted as scheduler.enabled = true)"},
        ),
        (
            "POST",
            "/scheduler/stop",
            scheduler_stop,
            "admin",
            "general",
            {"summary": "Stop the scheduler (persisted as scheduler.enabled = false)"},
        ),
        (
            "GET",
            "/fee-policy",
            fee_policy_preview,
            "readonly",
            "general",
            {"summary": "Each channel's fee rate at LND now and the rate the fee policy would set"},
        ),
        (
            "POST",
            "/fee-policy/apply",
            fee_policy_apply,
            "admin",
            GROUP,
            {
                "query": DryRunQuery,
                "summary": "Compute fee rates from balances and set them (a dry run unless told otherwise)",
            },
        ),
        (
            "GET",
            "/fee-policy/history",
            fee_policy_history,
            "readonly",
            "general",
            {"query": HistoryQuery, "summary": "Recorded fee rate decisions, newest first"},
        ),
        (
            "GET",
            "/lifecycle",
            lifecycle,
            "readonly",
            "general",
            {"summary": "Recommended channel closes and opens"},
        ),
        (
            "POST",
            "/lifecycle/execute",
            lifecycle_execute,
            "admin",
            GROUP,
            {
                "body": LifecycleRequest,
                "responses": {409: "Lifecycle actions are off, or this is not a current recommendation"},
                "summary": "Execute one current lifecycle recommendation (needs lifecycle.enabled)",
            },
        ),
        (
            "GET",
            "/backup",
            backup,
            "readonly",
            "general",
            {"summary": "Where channel backups are written and when the last one was"},
        ),
    ]
    for method, path, handler, role, group, extra in table:
        router.add(
            method, "/v1/rebalance" + path, handler, role=role, group=group, tags=("rebalancer",), **extra
        )
