from __future__ import annotations

from django.urls import path

from orders import views

app_name = "orders"

urlpatterns = [
    path("orders/", views.order_list, name="list"),
    path("orders/new/", views.order_new, name="new"),
    path("orders/<int:order_id>/", views.order_detail, name="detail"),
    path("api/orders/", views.api_place_order, name="api-place"),
    path("api/orders/<int:order_id>/", views.api_order_detail, name="api-detail"),
    path("api/orders/<int:order_id>/cancel/", views.api_cancel_order, name="api-cancel"),
]
