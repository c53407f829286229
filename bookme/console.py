"""The operators' console: the Django admin, with who-may-act rules, reason-asking confirmation
pages and an index that shows what needs attention.

Rules (one place):
- Every active staff user may read the console models (bookings, events, orphans, reports, ...).
- Only members of the "operators" group (created by reconciliation/migrations/0002) and
  superusers may run the console's actions. For everyone else the actions are hidden, and a
  posted action is refused with 403.
- The console models are never edited through forms: every change goes through an action that
  calls a service function, and is recorded twice: an admin LogEntry (who, when, the reason in
  its change message) and the domain record the service writes (actor + reason).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.core.exceptions import PermissionDenied
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, reverse
from django.utils import timezone

OPERATORS_GROUP = "operators"
# A booking in a transient state this long (or PAID this long past its auto-complete time)
# counts as stuck on the admin index; the booking list filter offers other ages.
STUCK_AFTER = timedelta(hours=1)
MAX_REASON_LENGTH = 500


def is_operator(user) -> bool:
    """May this user run console actions (refunds, retries, emergency cancels, pause)?"""
    if not (user and user.is_active and user.is_staff):
        return False
    return user.is_superuser or user.groups.filter(name=OPERATORS_GROUP).exists()


def actor_of(request) -> str:
    """The audit label the services store (same shape as the API's: "staff:<username>")."""
    from escrow.services import actor_label

    return actor_label(request.user)


# -- read-only model admins with operator actions ----------------------------------------------
class StaffReadOnly:
    """Every active staff user may look; nobody adds, edits or deletes through forms (every change
    goes through an action that calls a service)."""

    def has_view_permission(self, request, obj=None):
        return request.user.is_active and request.user.is_staff

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class ConsoleModelAdmin(StaffReadOnly, admin.ModelAdmin):
    """Read-only for all staff; actions declared with `permissions=["operate"]` for operators only."""

    def has_module_permission(self, request):
        return request.user.is_active and request.user.is_staff

    def has_operate_permission(self, request):
        return is_operator(request.user)

    def changelist_view(self, request, extra_context=None):
        # Hidden actions are already invalid choices for non-operators; a posted one is refused
        # outright (403) rather than bounced back with "no action selected".
        if request.method == "POST" and request.POST.get("action") and not self.has_operate_permission(request):
            raise PermissionDenied("only operators may run console actions")
        return super().changelist_view(request, extra_context)


class ConsoleInline(StaffReadOnly, admin.TabularInline):
    """A read-only inline (history, events, signatures, fees shown beside a booking)."""

    extra = 0
    max_num = 0
    can_delete = False
    show_change_link = True


class ReasonForm(forms.Form):
    reason = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3, "cols": 80}),
        max_length=MAX_REASON_LENGTH,
        strip=True,
        help_text="Stored with the action and shown in the object's history.",
    )


def confirm_with_reason(modeladmin, request, queryset, *, title: str, warning: str, perform, done: str):
    """Run an admin action behind a confirmation page that asks for a reason.

    First call (from the changelist): render templates/admin/console/confirm_action.html.
    Second call (the page's POST, with `confirm`): for each object call `perform(obj, actor,
    reason)` → a short result text, write a LogEntry "<title>: <reason> → <result>", and report
    successes and refusals as messages. A refusal of one object does not stop the others.
    Returns None after performing (Django redirects back to the changelist).
    """
    if not modeladmin.has_operate_permission(request):
        raise PermissionDenied("only operators may run console actions")
    form = ReasonForm(request.POST if "confirm" in request.POST else None)
    if "confirm" in request.POST and form.is_valid():
        reason = form.cleaned_data["reason"]
        actor = actor_of(request)
        succeeded = 0
        for obj in queryset:
            try:
                result = perform(obj, actor, reason)
            except Exception as exc:  # the service's refusal (ActionRefused, TransactionError, RpcError, ...)
                modeladmin.message_user(request, f"{obj}: not done: {exc}", messages.ERROR)
                modeladmin.log_change(request, obj, f"{title} refused: {exc} (reason given: {reason})")
                continue
            succeeded += 1
            modeladmin.log_change(request, obj, f"{title}: {reason}" + (f" → {result}" if result else ""))
        if succeeded:
            modeladmin.message_user(request, f"{done}: {succeeded} of {len(queryset)}.", messages.SUCCESS)
        return None
    opts = modeladmin.model._meta
    context = {
        **modeladmin.admin_site.each_context(request),
        "title": title,
        "warning": warning,
        "objects": list(queryset),
        "form": form,
        "opts": opts,
        "app_label": opts.app_label,
        "action_name": request.POST.get("action", ""),
        "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        "selected_ids": [str(pk) for pk in queryset.values_list("pk", flat=True)],
        "submit_label": title,
    }
    return TemplateResponse(request, "admin/console/confirm_action.html", context)


# -- what needs attention (admin index, health, metrics) -----------------------------------------
def stuck_bookings(older_than: timedelta = STUCK_AFTER, *, now=None):
    """Bookings that should have moved on by now.

    - PENDING_PAYMENT / PENDING_COMPLETION / PENDING_CANCELLATION unchanged for `older_than`
      (authorizations expire in minutes and reconciliation settles them every few minutes);
    - PAID while auto-complete has been due for `older_than` (scheduled time + the service
      window + `older_than` in the past).
    """
    from django.conf import settings
    from django.db.models import Q

    from escrow.models import Booking, BookingStatus

    now = now or timezone.now()
    transient = [BookingStatus.PENDING_PAYMENT, BookingStatus.PENDING_COMPLETION, BookingStatus.PENDING_CANCELLATION]
    window = timedelta(seconds=getattr(settings, "AUTO_COMPLETE_AFTER_SECONDS", 2 * 3600))
    return Booking.objects.filter(
        Q(status__in=transient, status_changed_at__lt=now - older_than)
        | Q(status=BookingStatus.PAID, scheduled_at__lt=now - window - older_than)
    )


@dataclass
class AttentionItem:
    label: str
    count: int | str
    url: str = ""
    severity: str = "ok"  # ok / warning / critical
    detail: str = ""


@dataclass
class Attention:
    items: list[AttentionItem] = field(default_factory=list)

    @property
    def needs_attention(self) -> bool:
        return any(item.severity != "ok" for item in self.items)


def _changelist(name: str, query: str = "") -> str:
    try:
        return reverse(f"admin:{name}_changelist") + (f"?{query}" if query else "")
    except NoReverseMatch:
        return ""


def attention_summary(*, now=None) -> Attention:
    """Counts for the admin index: dead letters, open orphans, stuck bookings, flags, sync lag, pause."""
    from chain_events.models import ChainEvent, EventStatus, Orphan, OrphanStatus, SyncCursor
    from escrow.models import Booking
    from reconciliation.models import EmergencyPause, ReconciliationFlag, ReconciliationReport

    now = now or timezone.now()
    items = []
    dead = ChainEvent.objects.filter(status=EventStatus.DEAD_LETTER, resolved_at__isnull=True).count()
    items.append(AttentionItem(
        "Dead-lettered chain events", dead,
        _changelist("chain_events_chainevent", "status__exact=DEAD_LETTER&unresolved=1"),
        "critical" if dead else "ok",
    ))
    failing = ChainEvent.objects.filter(status__in=[EventStatus.FAILED, EventStatus.RETRY]).count()
    items.append(AttentionItem(
        "Chain events failing (retrying)", failing, _changelist("chain_events_chainevent", "status__exact=FAILED"),
        "warning" if failing else "ok",
    ))
    orphans = Orphan.objects.filter(status=OrphanStatus.OPEN).count()
    items.append(AttentionItem(
        "Open orphans (paid on chain, unknown here)", orphans,
        _changelist("chain_events_orphan", "status__exact=OPEN"), "critical" if orphans else "ok",
    ))
    stuck = stuck_bookings(now=now).count()
    items.append(AttentionItem(
        f"Bookings stuck over {int(STUCK_AFTER.total_seconds() // 3600)} h", stuck,
        _changelist("escrow_booking", "stuck=1h"), "warning" if stuck else "ok",
    ))
    flagged = Booking.objects.filter(needs_attention=True).count()
    items.append(AttentionItem(
        "Bookings needing attention", flagged, _changelist("escrow_booking", "needs_attention__exact=1"),
        "warning" if flagged else "ok",
    ))
    flags = ReconciliationFlag.objects.filter(resolved_at__isnull=True).count()
    items.append(AttentionItem(
        "Open reconciliation flags", flags, _changelist("reconciliation_reconciliationflag", "open=1"),
        "warning" if flags else "ok",
    ))
    cursors = list(SyncCursor.objects.all())
    if not cursors:
        items.append(AttentionItem("Sync lag", "no scan yet", _changelist("chain_events_synccursor"), "warning"))
    for cursor in cursors:
        lag = cursor.lag_blocks
        age = (now - cursor.last_scan_at).total_seconds() if cursor.last_scan_at else None
        severity = "ok"
        if cursor.halted:
            severity = "critical"
        elif lag is None or lag > 10 or age is None or age > 120:
            severity = "warning"
        if cursor.last_error and not cursor.halted:
            severity = "critical" if age is None or age > 120 else "warning"
        detail = "halted: " + cursor.halt_reason if cursor.halted else (
            f"last scan {int(age)} s ago" if age is not None else "never scanned")
        if cursor.last_error and not cursor.halted:
            detail += f"; the last pass failed: {cursor.last_error[:300]}"
        items.append(AttentionItem(
            f"Sync lag (chain {cursor.chain_id}), blocks", "?" if lag is None else lag,
            _changelist("chain_events_synccursor"), severity, detail,
        ))
    # The contract's own paused() (cached a few seconds), not our last pause record: the owner
    # may unpause outside this backend, and a pause whose receipt wait timed out still counts.
    from chain_events.rpc import RpcError
    from reconciliation.services import contract_paused

    try:
        paused = contract_paused()
    except RpcError as exc:
        items.append(AttentionItem(
            "Contract paused", "unknown", _changelist("reconciliation_emergencypause"), "warning",
            f"paused() could not be read: {exc}",
        ))
    else:
        if paused:
            last_pause = EmergencyPause.objects.filter(action="pause").first()
            detail = "not paused by this backend" if last_pause is None else (
                f"last pause sent by {last_pause.actor} at {last_pause.created_at:%Y-%m-%d %H:%M}: {last_pause.reason}")
            items.append(AttentionItem(
                "Contract paused", "yes", _changelist("reconciliation_emergencypause"), "critical", detail,
            ))
    last_report = ReconciliationReport.objects.first()
    if last_report is not None:
        severity = "warning" if last_report.status == "FAILED" or last_report.errors else "ok"
        items.append(AttentionItem(
            "Last reconciliation", last_report.status, _changelist("reconciliation_reconciliationreport"), severity,
            f"{last_report.started_at:%Y-%m-%d %H:%M:%S}: {last_report.checked} checked, "
            f"{last_report.repaired} repaired, {last_report.flagged} flagged, {last_report.errors} errors",
        ))
    return Attention(items)


class ConsoleAdminSite(admin.AdminSite):
    """The default admin site (still at /admin/), titled for operators, with an attention panel."""

    site_header = "BookMe operators' console"
    site_title = "BookMe console"
    index_title = "Operations"
    index_template = "admin/console_index.html"

    def index(self, request, extra_context=None):
        extra_context = {**(extra_context or {}), "is_operator": is_operator(request.user)}
        if request.user.is_active and request.user.is_staff:
            extra_context["attention"] = attention_summary()
        return super().index(request, extra_context)
