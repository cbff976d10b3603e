"""Staff views of the outbox and campaigns. Actions call notifications.services."""

from __future__ import annotations

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.urls import path, reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from core.admin_links import task_id_html, task_result_links
from notifications.forms import CampaignForm
from notifications.models import Campaign, EmailPreference, Notification
from notifications.services import campaigns, outbox

# A reset or confirmation link in the outbox would let whoever reads it take the account.
HIDDEN_CREDENTIAL = "Not shown: this email carries a one-time link that only its recipient may read."


@admin.register(Notification)
class NotificationAdmin(admin.ModelAdmin):
    list_display = ("id", "kind", "recipient", "status", "attempts", "created_at", "sent_at", "short_error")
    list_filter = ("status", "kind", "created_at")
    search_fields = ("recipient", "subject", "dedup_key", "=id")
    date_hierarchy = "created_at"
    actions = ("resend_failed", "cancel_queued")
    readonly_fields = (
        "recipient",
        "user",
        "kind",
        "subject",
        "status",
        "attempts",
        "last_error",
        "dedup_key",
        "campaign",
        "about",
        "task",
        "lease_owner",
        "lease_expires_at",
        "created_at",
        "sent_at",
        "expires_at",
        "credential_expires_at",
        "headers",
        "text",
        "html",
    )
    # The bodies are shown through text/html below, which hide a credential-carrying one.
    exclude = ("subject_object", "task_id", "requeued_at", "body_text", "body_html")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # messages are created by the services, never by hand

    @admin.display(description="error")
    def short_error(self, notification: Notification) -> str:
        return notification.last_error[:80]

    @admin.display(description="body (text)")
    def text(self, notification: Notification) -> str:
        return HIDDEN_CREDENTIAL if notification.carries_credential else notification.body_text

    @admin.display(description="body (HTML source)")
    def html(self, notification: Notification) -> str:
        return HIDDEN_CREDENTIAL if notification.carries_credential else notification.body_html

    @admin.display(description="about")
    def about(self, notification: Notification) -> SafeString | str:
        label, _, pk = notification.subject_object.partition(":")
        if not pk:
            return "—"
        app, model = label.split(".")
        return format_html('<a href="{}">{} #{}</a>', reverse(f"admin:{app}_{model}_change", args=[pk]), model, pk)

    @admin.display(description="Celery task")
    def task(self, notification: Notification) -> SafeString | str:
        return task_id_html(notification.task_id, task_result_links([notification.task_id]))

    @admin.action(description="Resend failed", permissions=["change"])
    def resend_failed(self, request: HttpRequest, queryset: QuerySet[Notification]) -> None:
        resent = sum(outbox.resend(pk) for pk in queryset.values_list("pk", flat=True))
        self.message_user(request, f"Resending {resent} failed message(s).", messages.SUCCESS)
        if skipped := queryset.count() - resent:
            self.message_user(
                request,
                f"Skipped {skipped} that are not failed, or carried a one-time link (the customer asks for a new one).",
                messages.WARNING,
            )

    @admin.action(description="Cancel queued", permissions=["change"])
    def cancel_queued(self, request: HttpRequest, queryset: QuerySet[Notification]) -> None:
        cancelled = sum(outbox.cancel_queued(pk) for pk in queryset.values_list("pk", flat=True))
        self.message_user(request, f"Cancelled {cancelled} queued message(s).", messages.SUCCESS)
        if skipped := queryset.count() - cancelled:
            self.message_user(request, f"Skipped {skipped} that are not queued.", messages.WARNING)


@admin.register(Campaign)
class CampaignAdmin(admin.ModelAdmin):
    form = CampaignForm
    change_form_template = "admin/notifications/campaign/change_form.html"
    list_display = ("name", "status", "audience", "total", "sent", "failed", "progress_bar", "created_at")
    list_filter = ("status", "audience")
    search_fields = ("name", "subject")
    actions = ("start_selected", "resume_selected", "cancel_selected")

    def get_readonly_fields(self, request: HttpRequest, obj: Campaign | None = None) -> tuple[str, ...]:
        counts = (
            "status",
            "total",
            "sent",
            "failed",
            "error",
            "started_at",
            "launched_at",
            "finished_at",
            "launch_task",
        )
        if obj is not None and obj.status != Campaign.Status.DRAFT:
            return ("name", "subject", "body", "audience", "ordered_since", *counts)  # sent campaigns are history
        return counts

    def save_model(self, request: HttpRequest, obj: Campaign, form: CampaignForm, change: bool) -> None:
        if not change:
            obj.created_by = request.user
        super().save_model(request, obj, form, change)

    @admin.display(description="progress")
    def progress_bar(self, campaign: Campaign) -> SafeString:
        return format_html(
            '<progress max="100" value="{}" title="{}%"></progress>', campaign.progress, campaign.progress
        )

    @admin.display(description="launch task")
    def launch_task(self, campaign: Campaign) -> SafeString | str:
        return task_id_html(campaign.task_id, task_result_links([campaign.task_id]))

    def get_urls(self) -> list:
        wrap = self.admin_site.admin_view
        return [
            path("<int:campaign_id>/start/", wrap(self.start_view), name="notifications_campaign_start"),
            path("<int:campaign_id>/cancel/", wrap(self.cancel_view), name="notifications_campaign_cancel"),
            path("<int:campaign_id>/resume/", wrap(self.resume_view), name="notifications_campaign_resume"),
            *super().get_urls(),
        ]

    def _run(self, request: HttpRequest, campaign_id: int, operation: str) -> HttpResponse:
        campaign = get_object_or_404(Campaign, pk=campaign_id)
        if not self.has_change_permission(request, campaign):
            raise PermissionDenied
        try:
            if operation == "start":
                campaigns.start_campaign(campaign.pk, actor_id=request.user.pk)
                self.message_user(request, f"Campaign “{campaign}” is being sent.", messages.SUCCESS)
            elif operation == "resume":
                campaigns.resume_campaign(campaign.pk, actor_id=request.user.pk)
                self.message_user(request, f"Campaign “{campaign}” is being sent again.", messages.SUCCESS)
            else:
                campaigns.cancel_campaign(campaign.pk, actor_id=request.user.pk)
                self.message_user(request, f"Campaign “{campaign}” is cancelled.", messages.SUCCESS)
        except campaigns.CampaignError as exc:
            self.message_user(request, str(exc), messages.ERROR)
        return HttpResponseRedirect(reverse("admin:notifications_campaign_change", args=[campaign.pk]))

    def start_view(self, request: HttpRequest, campaign_id: int) -> HttpResponse:
        if request.method != "POST":
            return HttpResponse(status=405)
        return self._run(request, campaign_id, "start")

    def cancel_view(self, request: HttpRequest, campaign_id: int) -> HttpResponse:
        if request.method != "POST":
            return HttpResponse(status=405)
        return self._run(request, campaign_id, "cancel")

    def resume_view(self, request: HttpRequest, campaign_id: int) -> HttpResponse:
        if request.method != "POST":
            return HttpResponse(status=405)
        return self._run(request, campaign_id, "resume")

    @admin.action(description="Start selected campaigns", permissions=["change"])
    def start_selected(self, request: HttpRequest, queryset: QuerySet[Campaign]) -> None:
        for campaign in queryset:
            try:
                campaigns.start_campaign(campaign.pk, actor_id=request.user.pk)
                self.message_user(request, f"“{campaign}” is being sent.", messages.SUCCESS)
            except campaigns.CampaignError as exc:
                self.message_user(request, f"“{campaign}”: {exc}", messages.ERROR)

    @admin.action(description="Resume selected failed campaigns", permissions=["change"])
    def resume_selected(self, request: HttpRequest, queryset: QuerySet[Campaign]) -> None:
        for campaign in queryset:
            try:
                campaigns.resume_campaign(campaign.pk, actor_id=request.user.pk)
                self.message_user(request, f"“{campaign}” is being sent again.", messages.SUCCESS)
            except campaigns.CampaignError as exc:
                self.message_user(request, f"“{campaign}”: {exc}", messages.ERROR)

    @admin.action(description="Cancel selected campaigns", permissions=["change"])
    def cancel_selected(self, request: HttpRequest, queryset: QuerySet[Campaign]) -> None:
        for campaign in queryset:
            try:
                campaigns.cancel_campaign(campaign.pk, actor_id=request.user.pk)
                self.message_user(request, f"“{campaign}” is cancelled.", messages.SUCCESS)
            except campaigns.CampaignError as exc:
                self.message_user(request, f"“{campaign}”: {exc}", messages.ERROR)


@admin.register(EmailPreference)
class EmailPreferenceAdmin(admin.ModelAdmin):
    list_display = ("user", "unsubscribed_at")
    list_filter = (("unsubscribed_at", admin.EmptyFieldListFilter),)
    search_fields = ("user__username", "user__email")
    raw_id_fields = ("user",)
