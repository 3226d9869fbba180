"""A tenant's usage and statements, mounted under /api/ beside accounts' routes."""

from django.urls import path
from rest_framework.routers import SimpleRouter

from billing import api

router = SimpleRouter(trailing_slash=True)
router.register(r"tenants/(?P<slug>[-\w]+)/usage", api.UsageViewSet, basename="tenant-usage")
router.register(r"tenants/(?P<slug>[-\w]+)/statements", api.StatementViewSet, basename="statements")

urlpatterns = [
    path(
        "tenants/<slug:slug>/usage",
        api.UsageNoSlashViewSet.as_view({"get": "list"}),
        name="tenant-usage-noslash",
    ),
    *router.urls,
]
