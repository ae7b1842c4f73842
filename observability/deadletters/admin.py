"""Django admin for dead letters: a filterable list, the full detail with traceback, and "replay" /
"discard" actions limited to users holding ``observability.replay_deadletter``. Deleting ("Delete selected",
the detail page's "Delete") needs ``observability.purge_deadletter`` - Django's own delete permission is not
enough - and goes through ``dead_letters_purge``, which counts and logs what it deleted."""

from __future__ import annotations

from datetime import UTC

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html

from observability.deadletters import services as dead_letters
from observability.deadletters.models import DeadLetter, DeadLetterReplay

REPLAY_PERMISSION = "observability.replay_deadletter"
PURGE_PERMISSION = "observability.purge_deadletter"
#: Characters of a message's first line in the list: the column fits at 1400 px beside the others.
MESSAGE_WIDTH = 50


class DeadLetterReplayInline(admin.TabularInline[DeadLetterReplay, DeadLetter]):
    model = DeadLetterReplay
    extra = 0
    can_delete = False
    readonly_fields = fields = ("replayed_at", "operator", "new_task_id", "queue")

    def has_add_permission(self, request: HttpRequest, obj: DeadLetter | None = None) -> bool:
        return False


@admin.register(DeadLetter)
class DeadLetterAdmin(admin.ModelAdmin[DeadLetter]):
    # What on-call reads at 1400 px without opening an entry: when (to the second, in UTC), what and why. The
    # exception shows its class name and the message its first line, cut with an ellipsis; the full text is
    # in each cell's title (hover) and on the detail page.
    list_display = ["id", "failed_at", "status", "reason", "task_name", "exception", "message", "failure_count"]
    list_filter = ["status", "reason", "task_name", "exception_type"]
    search_fields = ["task_id", "task_name", "exception_message", "trace_id", "fingerprint"]
    date_hierarchy = "last_failed_at"
    inlines = [DeadLetterReplayInline]
    actions = ["replay", "discard"]
    fieldsets = [
        (None, {"fields": ["status", "reason", "task_name", "task_id", "args", "kwargs"]}),
        ("Failure", {"fields": ["exception_type", "exception_message", "traceback", "raw_message"]}),
        ("Delivery", {"fields": ["queue", "exchange", "routing_key", "headers", "retries", "delivery_count"]}),
        ("Where and when", {"fields": ["worker_host", "trace_id", "fingerprint", "first_failed_at", "last_failed_at",
                                        "failure_count"]}),
    ]  # fmt: skip

    @admin.display(description="last failed (UTC)", ordering="last_failed_at")
    def failed_at(self, entry: DeadLetter) -> str:
        return f"{entry.last_failed_at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"

    @admin.display(description="exception", ordering="exception_type")
    def exception(self, entry: DeadLetter) -> str:
        return format_html('<span title="{}">{}</span>', entry.exception_type, entry.exception_type.rsplit(".", 1)[-1])

    @admin.display(description="message")
    def message(self, entry: DeadLetter) -> str:
        lines = entry.exception_message.strip().splitlines()
        first = lines[0].strip() if lines else ""
        if len(first) > MESSAGE_WIDTH:
            first = first[: MESSAGE_WIDTH - 1].rstrip() + "…"
        elif len(lines) > 1:
            first += " …"
        return format_html('<span title="{}">{}</span>', entry.exception_message, first)

    def get_readonly_fields(self, request: HttpRequest, obj: DeadLetter | None = None) -> list[str]:
        # A dead letter is evidence: nobody edits it; replay and discard are the only changes.
        return [field.name for field in DeadLetter._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: DeadLetter | None = None) -> bool:
        return request.user.has_perm(PURGE_PERMISSION)

    def delete_model(self, request: HttpRequest, obj: DeadLetter) -> None:
        self.delete_queryset(request, DeadLetter.objects.filter(pk=obj.pk))

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[DeadLetter]) -> None:
        # Django's bulk delete would remove the rows uncounted and unlogged.
        dead_letters.dead_letters_purge(queryset, reason=f"admin, by {request.user.get_username()}")

    def has_replay_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(REPLAY_PERMISSION)

    @admin.action(description="Replay the selected pending dead letters", permissions=["replay"])
    def replay(self, request: HttpRequest, queryset: QuerySet[DeadLetter]) -> None:
        try:
            result = dead_letters.dead_letters_replay(queryset, operator=request.user.get_username())
        except dead_letters.ReplayStoppedError as stopped:
            # What was published before the broker went away is committed; the message names the count.
            result = stopped.result
            self.message_user(request, f"{stopped}.", messages.ERROR)
        else:
            self.message_user(request, f"Replayed {len(result.published)} dead letter(s).", messages.SUCCESS)
        for entry_id, why in result.skipped.items():
            self.message_user(request, f"Dead letter {entry_id} not replayed: {why}.", messages.WARNING)

    @admin.action(description="Discard the selected pending dead letters", permissions=["replay"])
    def discard(self, request: HttpRequest, queryset: QuerySet[DeadLetter]) -> None:
        count = dead_letters.dead_letters_discard(queryset, operator=request.user.get_username())
        self.message_user(request, f"Discarded {count} dead letter(s).", messages.SUCCESS)
