// Keeps the order page live: polls the order's JSON endpoint until the order is final,
// and cancels through the API with the CSRF token from the cookie.
(function () {
  const root = document.getElementById("order");
  if (!root) return;
  const FINAL = ["completed", "failed", "cancelled"];
  const STEPS = { "": "Not started", reserved: "Stock reserved", charged: "Charged", shipped: "Shipped", notified: "Customer notified" };
  const field = (name) => root.querySelector(`[data-field="${name}"]`);
  const cancelButton = root.querySelector('[data-action="cancel"]');

  function csrfToken() {
    const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
    return match ? decodeURIComponent(match[1]) : "";
  }

  function show(order) {
    const status = field("status");
    status.textContent = order.status.charAt(0).toUpperCase() + order.status.slice(1);
    status.className = `badge ${order.status}`;
    field("step").textContent = STEPS[order.step] || order.step;
    field("failure_reason").textContent = order.failure_reason;
    field("tracking").textContent = order.tracking_number ? `Tracking number: ${order.tracking_number}` : "";
    const final = FINAL.includes(order.status);
    field("live").textContent = final ? "" : "(updating live)";
    cancelButton.hidden = final || ["charged", "shipped", "notified"].includes(order.step);
    return final;
  }

  async function poll(delay) {
    try {
      const response = await fetch(root.dataset.api, { headers: { Accept: "application/json" } });
      if (response.ok && show(await response.json())) return;
    } catch (error) {
      // A network blip: keep polling, a little slower.
    }
    setTimeout(() => poll(Math.min(delay * 1.5, 5000)), delay);
  }

  cancelButton.addEventListener("click", async () => {
    cancelButton.disabled = true;
    const response = await fetch(root.dataset.cancel, { method: "POST", headers: { "X-CSRFToken": csrfToken() } });
    const body = await response.json();
    field("cancel_error").textContent = response.ok ? "" : body.error;
    cancelButton.disabled = false;
    poll(250);
  });

  poll(500);
})();
