from django.urls import path

from inference import anthropic, api, responses

urlpatterns = [
    path("models", api.ModelListView.as_view(), name="models"),
    path("models/<path:model_id>", api.ModelDetailView.as_view(), name="model-detail"),
    path("completions", api.CompletionView.as_view(), name="completions"),
    path("chat/completions", api.ChatCompletionView.as_view(), name="chat-completions"),
    path("embeddings", api.EmbeddingView.as_view(), name="embeddings"),
    path("batch", api.BatchView.as_view(), name="batch"),
    path("compare", api.CompareView.as_view(), name="compare"),
    path("messages", anthropic.MessageView.as_view(), name="messages"),
    path(
        "messages/count_tokens", anthropic.CountTokensView.as_view(), name="messages-count-tokens"
    ),
    path("responses", responses.ResponseCreateView.as_view(), name="responses"),
    path(
        "responses/<str:response_id>",
        responses.ResponseDetailView.as_view(),
        name="response-detail",
    ),
    path(
        "responses/<str:response_id>/input_items",
        responses.ResponseInputItemsView.as_view(),
        name="response-input-items",
    ),
    path("analyze", api.AnalyzeView.as_view(), name="analyze"),
]
