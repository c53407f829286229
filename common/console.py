"""Building blocks of the operators' console (the Django admin) that every app's admin uses:
who may act, read-only model admins, and the one "confirm with a reason, then act" helper
(`reason_action` declares such an action; `confirm_with_reason` runs it).

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

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.core.exceptions import PermissionDenied
from django.template.response import TemplateResponse

from .audit import MAX_REASON_LENGTH, staff_actor

OPERATORS_GROUP = "operators"


def is_operator(user) -> bool:
    """May this user run console actions (refunds, retries, emergency cancels, pause)?"""
    if not (user and user.is_active and user.is_staff):
        return False
    return user.is_superuser or user.groups.filter(name=OPERATORS_GROUP).exists()


def actor_of(request) -> str:
    """The audit label the services store (same shape as the API's: "staff:<username>")."""
    return staff_actor(request.user)


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
    return reason_page(
        modeladmin, request, form, title=title, warning=warning, objects=list(queryset),
        action_name=request.POST.get("action", ""),
        selected_ids=[str(pk) for pk in queryset.values_list("pk", flat=True)],
    )


def reason_action(*, description: str, title: str, warning: str, done: str, eligible: dict | None = None):
    """Declare an operators' admin action that asks for a reason, then acts (confirm_with_reason).

    Decorates `perform(obj, actor, reason) -> str` (the result written to the object's history,
    "" for none) in a ModelAdmin body; the action keeps its name. `eligible`: queryset lookups
    the selected objects must match to be acted on (the others are left out of the page).
    """

    def declare(perform):
        @admin.action(description=description, permissions=["operate"])
        def action(modeladmin, request, queryset):
            if eligible:
                queryset = queryset.filter(**eligible)
            return confirm_with_reason(
                modeladmin, request, queryset, title=title, warning=warning, perform=perform, done=done
            )

        action.__name__, action.__qualname__, action.__doc__ = perform.__name__, perform.__qualname__, perform.__doc__
        return action

    return declare


def reason_page(modeladmin, request, form, *, title: str, warning: str, objects=(), action_name: str = "",
                selected_ids=()) -> TemplateResponse:
    """The confirmation page asking why (templates/admin/console/confirm_action.html): the objects
    an action will touch (none for a page of its own, e.g. "pause the contract"), the warning and
    the reason form; its submit button says `title`."""
    opts = modeladmin.model._meta
    context = {
        **modeladmin.admin_site.each_context(request),
        "title": title,
        "warning": warning,
        "objects": list(objects),
        "form": form,
        "opts": opts,
        "app_label": opts.app_label,
        "action_name": action_name,
        "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        "selected_ids": list(selected_ids),
        "submit_label": title,
    }
    return TemplateResponse(request, "admin/console/confirm_action.html", context)
