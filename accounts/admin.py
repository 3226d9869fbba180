"""Staff admin for tenants, members, API keys and the audit trail.

Every change that the API audits goes through the same services here, with
the staff user as the actor, so the admin leaves the same trail.
"""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.db.models import Q
from django.http import HttpResponse, HttpResponseRedirect
from django.utils import timezone

from accounts.models import DEFAULT_SCOPES, ApiKey, AuditLog, Membership, Scope, Tenant
from accounts.selectors import tenant_models
from accounts.services import (
    DEFAULT_ROTATION_GRACE,
    Actor,
    api_key_issue,
    api_key_revoke,
    api_key_rotate,
    member_add,
    member_change_role,
    member_remove,
    tenant_models_set,
)
from accounts.throttling import login_throttled
from llmsite.admin import ReadOnlyAdmin
from llmsite.errors import APIError

# New raw keys travel to the browser in a signed messages cookie; too many of
# them would spill into the session table, i.e. be stored.
MAX_KEYS_PER_ROTATION = 10


def request_actor(request) -> Actor:
    return Actor(
        user=request.user,
        ip=request.META.get("REMOTE_ADDR") or None,
        request_id=getattr(request, "request_id", ""),
    )


def _scope_list(key: ApiKey) -> str:
    return ", ".join(key.scopes) or "—"


# -- tenants ------------------------------------------------------------------------
class MembershipRejected(Exception):
    """A member change a service refused; the whole admin save is rolled back."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class MembershipInlineForm(forms.ModelForm):
    class Meta:
        model = Membership
        fields = ["user", "role"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance.pk is not None:
            # A membership belongs to one user: change the role, or remove it.
            self.fields["user"].disabled = True


class MembershipInline(admin.TabularInline):
    model = Membership
    form = MembershipInlineForm
    fields = ["user", "role", "created_at"]
    readonly_fields = ["created_at"]
    autocomplete_fields = ["user"]
    extra = 0


class ApiKeyInline(admin.TabularInline):
    """The tenant's keys at a glance; never a secret or a hash."""

    model = ApiKey
    fields = ("prefix", "name", "state", "scope_list", "expires_at", "last_used_at")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True
    verbose_name_plural = "API keys"

    @admin.display(description="scopes")
    def scope_list(self, key: ApiKey) -> str:
        return _scope_list(key)

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    list_display = ["slug", "name", "is_active", "created_at"]
    list_filter = ["is_active"]
    search_fields = ["slug", "name"]
    filter_horizontal = ["allowed_models"]
    inlines = [MembershipInline, ApiKeyInline]

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        try:
            return super().changeform_view(request, object_id, form_url, extra_context)
        except MembershipRejected as exc:
            # Raised inside the admin's transaction: nothing from this submit was saved.
            self.message_user(request, f"Nothing was saved: {exc.message}", messages.ERROR)
            return HttpResponseRedirect(request.get_full_path())

    def save_related(self, request, form, formsets, change):
        # The allow-list is set through the service (audited), not by save_m2m.
        models = form.cleaned_data.pop("allowed_models", None)
        super().save_related(request, form, formsets, change)
        if models is not None:
            tenant_models_set(
                tenant=form.instance,
                models=models,
                all_models=form.instance.all_models,
                actor=request_actor(request),
            )

    def save_formset(self, request, form, formset, change):
        if formset.model is not Membership:
            return super().save_formset(request, form, formset, change)
        actor = request_actor(request)
        tenant = form.instance
        # commit=False sorts the forms into new, changed and deleted rows.
        formset.save(commit=False)
        # Promotions first, so handing ownership over in one submit never
        # leaves the tenant without an owner in between.
        changes = sorted(
            (m for m, fields in formset.changed_objects if "role" in fields),
            key=lambda m: m.role != "owner",
        )
        try:
            for membership in formset.new_objects:
                member_add(tenant=tenant, user=membership.user, role=membership.role, actor=actor)
            for membership in changes:
                member_change_role(membership=membership, role=membership.role, actor=actor)
            for membership in formset.deleted_objects:
                member_remove(membership=membership, actor=actor)
        except APIError as exc:
            raise MembershipRejected(exc.message) from exc


# -- API keys -----------------------------------------------------------------------
class KeyStateFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request, model_admin):
        return [(s, s) for s in ("active", "rotating", "expired", "revoked")]

    def queryset(self, request, queryset):
        now = timezone.now()
        live = Q(revoked_at__isnull=True) & (Q(expires_at__isnull=True) | Q(expires_at__gt=now))
        match self.value():
            case "active":
                return queryset.filter(live, replaced_by__isnull=True)
            case "rotating":
                return queryset.filter(live, replaced_by__isnull=False)
            case "expired":
                return queryset.filter(revoked_at__isnull=True, expires_at__lte=now)
            case "revoked":
                return queryset.filter(revoked_at__isnull=False)
        return queryset


class KeyExpiryFilter(admin.SimpleListFilter):
    title = "expiry"
    parameter_name = "expiry"

    def lookups(self, request, model_admin):
        return [("has", "has expiry"), ("expired", "expired"), ("none", "no expiry")]

    def queryset(self, request, queryset):
        now = timezone.now()
        match self.value():
            case "has":
                return queryset.filter(expires_at__gt=now)
            case "expired":
                return queryset.filter(expires_at__lte=now)
            case "none":
                return queryset.filter(expires_at__isnull=True)
        return queryset


class ApiKeyIssueForm(forms.ModelForm):
    scopes = forms.MultipleChoiceField(
        choices=Scope.choices,
        initial=DEFAULT_SCOPES,
        widget=forms.CheckboxSelectMultiple,
    )

    class Meta:
        model = ApiKey
        fields = ["tenant", "name", "scopes", "expires_at", "all_models", "allowed_models"]

    def clean_expires_at(self):
        expires_at = self.cleaned_data["expires_at"]
        if expires_at is not None and expires_at <= timezone.now():
            raise forms.ValidationError("The expiry must be in the future.")
        return expires_at

    def clean(self):
        super().clean()
        cleaned = self.cleaned_data
        tenant, models = cleaned.get("tenant"), cleaned.get("allowed_models")
        if tenant is not None and models:
            usable = set(tenant_models(tenant=tenant).values_list("pk", flat=True))
            outside = [m.model_id for m in models if m.pk not in usable]
            if outside:
                self.add_error(
                    "allowed_models",
                    f"Not enabled for {tenant.slug}: {', '.join(outside)}.",
                )
        return cleaned


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = [
        "prefix",
        "tenant",
        "name",
        "state",
        "scope_list",
        "created_at",
        "expires_at",
        "last_used_at",
    ]
    list_filter = ["tenant", KeyStateFilter, KeyExpiryFilter]
    list_select_related = ["tenant"]
    search_fields = ["prefix", "name", "tenant__slug"]
    filter_horizontal = ["allowed_models"]
    actions = ["revoke_selected", "rotate_selected"]
    add_fields = ["tenant", "name", "scopes", "expires_at", "all_models", "allowed_models"]
    # hashed_key is never shown, not even read-only.
    change_fields = [
        "name",
        "tenant",
        "prefix",
        "state",
        "scope_list",
        "all_models",
        "allowed_models",
        "created_by",
        "created_at",
        "expires_at",
        "last_used_at",
        "revoked_at",
        "replaced_by",
    ]

    @admin.display(description="state")
    def state(self, key: ApiKey) -> str:
        return key.state

    @admin.display(description="scopes")
    def scope_list(self, key: ApiKey) -> str:
        return _scope_list(key)

    def get_fields(self, request, obj=None):
        return self.add_fields if obj is None else self.change_fields

    def get_readonly_fields(self, request, obj=None):
        return [] if obj is None else [f for f in self.change_fields if f != "name"]

    def get_form(self, request, obj=None, change=False, **kwargs):
        if obj is None:
            kwargs["form"] = ApiKeyIssueForm
        return super().get_form(request, obj, change=change, **kwargs)

    def has_delete_permission(self, request, obj=None):
        # Keys are revoked, never deleted: usage and audit rows point at them.
        return False

    def save_model(self, request, obj, form, change):
        if change:
            return super().save_model(request, obj, form, change)
        data = form.cleaned_data
        key, raw = api_key_issue(
            tenant=data["tenant"],
            name=data["name"],
            scopes=data["scopes"],
            expires_at=data["expires_at"],
            allowed_models=list(data["allowed_models"]),
            all_models=data["all_models"],
            actor=request_actor(request),
        )
        # The admin goes on with `obj` (change message, redirect): make it the issued row.
        obj.pk = key.pk
        obj.refresh_from_db()
        messages.success(
            request,
            f"New API key for {key.tenant.slug}: {raw} — copy it now; "
            "it is not stored and will not be shown again.",
        )

    def save_related(self, request, form, formsets, change):
        if change:
            super().save_related(request, form, formsets, change)
        # On add, api_key_issue has set the allowed models already.

    @admin.action(description="Revoke selected keys")
    def revoke_selected(self, request, queryset):
        actor = request_actor(request)
        revoked = [k for k in queryset if k.revoked_at is None]
        for key in revoked:
            api_key_revoke(api_key=key, actor=actor)
        self.message_user(request, f"Revoked {len(revoked)} key(s).", messages.SUCCESS)

    @admin.action(description="Rotate selected keys (24 h grace)")
    def rotate_selected(self, request, queryset):
        keys = list(queryset.select_related("tenant"))
        if len(keys) > MAX_KEYS_PER_ROTATION:
            self.message_user(
                request,
                f"Rotate at most {MAX_KEYS_PER_ROTATION} keys at a time, "
                "so that every new key can be shown once.",
                messages.ERROR,
            )
            return
        actor = request_actor(request)
        for key in keys:
            try:
                new_key, raw = api_key_rotate(
                    api_key=key, grace=DEFAULT_ROTATION_GRACE, actor=actor
                )
            except APIError as exc:
                self.message_user(request, f"{key.prefix}: {exc.message}", messages.ERROR)
                continue
            key.refresh_from_db(fields=["expires_at"])
            until = timezone.localtime(key.expires_at).strftime("%Y-%m-%d %H:%M %Z")
            self.message_user(
                request,
                f"Rotated {key.prefix} ({key.tenant.slug}); the old key works until {until}. "
                f"New key {new_key.prefix}: {raw} — copy it now; it will not be shown again.",
                messages.SUCCESS,
            )


# -- audit trail ---------------------------------------------------------------------
@admin.register(AuditLog)
class AuditLogAdmin(ReadOnlyAdmin):
    """Read-only: the trail is append-only, for staff too."""

    list_display = [
        "created_at",
        "tenant",
        "action",
        "actor_display",
        "target_display",
        "ip",
        "request_id",
    ]
    list_filter = ["tenant", "action"]
    list_select_related = ["tenant"]
    search_fields = ["action", "actor_repr", "target_repr", "target_id", "request_id"]
    date_hierarchy = "created_at"

    @admin.display(description="actor", ordering="actor_repr")
    def actor_display(self, row: AuditLog) -> str:
        return row.actor_repr

    @admin.display(description="target", ordering="target_repr")
    def target_display(self, row: AuditLog) -> str:
        return row.target_repr


# -- sign-in --------------------------------------------------------------------------
def admin_login(request, extra_context=None):
    """The admin's login page, with the API sign-in's per-IP and per-username limits
    (and the same counters). Routed ahead of admin.site.urls (accounts/admin_urls.py)."""
    if request.method == "POST" and login_throttled(
        request, username=request.POST.get("username", "")
    ):
        response = HttpResponse(
            "Too many sign-in attempts; wait a minute and try again.",
            status=429,
            content_type="text/plain; charset=utf-8",
        )
        response["Retry-After"] = "60"
        return response
    return admin.site.login(request, extra_context)
