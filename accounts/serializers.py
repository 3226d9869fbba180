from __future__ import annotations

from rest_framework import serializers

from accounts.models import ApiKey, AuditLog, Membership, Role, Scope
from accounts.services import DEFAULT_ROTATION_GRACE, MAX_ROTATION_GRACE


class ApiKeySerializer(serializers.ModelSerializer):
    id = serializers.CharField(source="prefix", read_only=True)
    state = serializers.CharField(read_only=True)
    allowed_models = serializers.SerializerMethodField()
    created_by = serializers.SerializerMethodField()
    replaced_by = serializers.SerializerMethodField()

    class Meta:
        model = ApiKey
        fields = [
            "id",
            "name",
            "scopes",
            "all_models",
            "allowed_models",
            "state",
            "created_at",
            "created_by",
            "expires_at",
            "last_used_at",
            "revoked_at",
            "replaced_by",
        ]
        read_only_fields = fields

    def get_allowed_models(self, key: ApiKey) -> list[str]:
        return [m.model_id for m in key.allowed_models.all()]

    def get_created_by(self, key: ApiKey) -> str | None:
        return key.created_by.get_username() if key.created_by else None

    def get_replaced_by(self, key: ApiKey) -> str | None:
        return key.replaced_by.prefix if key.replaced_by else None


class ApiKeyWithSecretSerializer(ApiKeySerializer):
    key = serializers.SerializerMethodField(help_text="The raw key. Shown once, never again.")

    class Meta(ApiKeySerializer.Meta):
        fields = [*ApiKeySerializer.Meta.fields, "key"]
        read_only_fields = fields

    def get_key(self, key: ApiKey) -> str:
        return self.context["raw_key"]


class ApiKeyCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100, required=False, allow_blank=True, default="")
    scopes = serializers.ListField(
        child=serializers.ChoiceField(choices=Scope.choices),
        required=False,
        default=[Scope.INFERENCE.value],
        max_length=len(Scope.values),
    )
    expires_at = serializers.DateTimeField(required=False, allow_null=True, default=None)
    allowed_models = serializers.ListField(
        child=serializers.CharField(max_length=128), required=False, default=list, max_length=100
    )


class ApiKeyRotateSerializer(serializers.Serializer):
    grace_seconds = serializers.IntegerField(
        min_value=0,
        max_value=int(MAX_ROTATION_GRACE.total_seconds()),
        required=False,
        default=int(DEFAULT_ROTATION_GRACE.total_seconds()),
        help_text="How long the old key keeps working (default 24 h).",
    )


class MembershipSerializer(serializers.ModelSerializer):
    username = serializers.CharField(source="user.username", read_only=True)

    class Meta:
        model = Membership
        fields = ["username", "role", "created_at"]
        read_only_fields = fields


class MemberAddSerializer(serializers.Serializer):
    username = serializers.CharField(max_length=150)
    role = serializers.ChoiceField(choices=Role.choices, default=Role.MEMBER)
    email = serializers.EmailField(required=False, allow_blank=True, default="")


class MemberRoleSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=Role.choices)


class AuditLogSerializer(serializers.ModelSerializer):
    actor = serializers.CharField(source="actor_repr", read_only=True)
    target = serializers.CharField(source="target_repr", read_only=True)

    class Meta:
        model = AuditLog
        fields = [
            "id",
            "created_at",
            "action",
            "actor",
            "target_type",
            "target_id",
            "target",
            "data",
            "ip",
            "request_id",
        ]
        read_only_fields = fields


class TenantSerializer(serializers.Serializer):
    slug = serializers.CharField(read_only=True)
    name = serializers.CharField(read_only=True)
    role = serializers.CharField(read_only=True, allow_null=True)


class LogoutSerializer(serializers.Serializer):
    refresh = serializers.CharField()
