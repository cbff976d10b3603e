// Keeps the report page live: polls the report's JSON until it is done, failed or cancelled,
// then shows the figures, the chart and the CSV link without a reload.
(function () {
  const root = document.getElementById("report");
  if (!root) return;
  const field = (name) => root.querySelector(`[data-field="${name}"]`);
  // Amounts and counts for people, in the shop's locale; the JSON keeps plain numbers.
  const locale = root.dataset.locale || undefined;
  const count = (value) => new Intl.NumberFormat(locale).format(value);
  const money = (value, currency) =>
    new Intl.NumberFormat(locale, { style: "currency", currency }).format(Number(value));
  const cell = (text, numeric) => {
    const td = document.createElement("td");
    td.textContent = text;
    if (numeric) td.className = "num";
    return td;
  };

  function show(report) {
    const status = field("status");
    status.textContent = report.status.charAt(0).toUpperCase() + report.status.slice(1);
    status.className = `badge ${report.status}`;
    field("percent").textContent = `${report.progress}%`;
    field("bar").style.width = `${report.progress}%`;
    field("error").textContent = report.error;
    if (report.status !== "done") {
      const final = ["failed", "cancelled"].includes(report.status);
      const cancel = field("cancel");
      if (final && cancel) cancel.hidden = true;
      return final;
    }
    if (field("cancel")) field("cancel").hidden = true;
    const summary = report.summary;
    field("definition").textContent = summary.definition;
    field("revenue").textContent = money(summary.revenue, summary.currency);
    field("order_count").textContent = count(summary.order_count);
    field("average_order_value").textContent = money(summary.average_order_value, summary.currency);
    const rows = field("top_products");
    rows.replaceChildren(...summary.top_products.map((product) => {
      const tr = document.createElement("tr");
      tr.append(cell(`${product.name} ${product.sku}`), cell(count(product.quantity), true), cell(money(product.revenue, summary.currency), true));
      return tr;
    }));
    field("chart").src = report.chart_url;
    field("csv").href = report.csv_url;
    field("result").hidden = false;
    return true;
  }

  async function poll() {
    try {
      const response = await fetch(root.dataset.api, { headers: { Accept: "application/json" } });
      if (response.ok && show(await response.json())) return;
    } catch (error) {
      // A network blip: try again.
    }
    setTimeout(poll, 700);
  }

  if (!["done", "failed", "cancelled"].includes(root.dataset.status)) poll();
})();
