from django.contrib import admin

from inference.models import LLMModel


@admin.register(LLMModel)
class LLMModelAdmin(admin.ModelAdmin):
    list_display = ["model_id", "path", "n_ctx", "chat_format", "embeddings", "enabled"]
    list_filter = ["enabled", "chat_format"]
    search_fields = ["model_id", "path"]
