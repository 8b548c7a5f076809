// Settings > Email Rules: drag a row of the list to change the evaluation order; dropping it
// sends the whole new order (a plain form post, then the page reloads). Without JavaScript the
// ↑ and ↓ buttons of each row do the same, one step at a time.
(function () {
  "use strict";

  function start() {
    const table = document.getElementById("email-rules");
    const form = document.getElementById("rule-order-form");
    if (!table || !form || !table.tBodies.length) {
      return;
    }
    const body = table.tBodies[0];
    const rows = () => Array.from(body.rows);
    const orderOf = () => rows().map((row) => row.dataset.ruleId);
    const before = orderOf().join(",");
    let dragged = null;

    document.querySelectorAll(".drag-hint").forEach((hint) => { hint.hidden = false; });
    rows().forEach((row) => {
      row.draggable = true;
      row.classList.add("draggable");
      row.addEventListener("dragstart", (event) => {
        dragged = row;
        row.classList.add("dragging");
        event.dataTransfer.effectAllowed = "move";
        event.dataTransfer.setData("text/plain", row.dataset.ruleId);
      });
      row.addEventListener("dragend", () => {
        row.classList.remove("dragging");
        dragged = null;
      });
    });

    body.addEventListener("dragover", (event) => {
      if (!dragged) {
        return;
      }
      event.preventDefault();  // allows the drop here
      const target = event.target.closest("tr");
      if (!target || target === dragged || target.parentNode !== body) {
        return;
      }
      const box = target.getBoundingClientRect();
      const after = event.clientY > box.top + box.height / 2;
      body.insertBefore(dragged, after ? target.nextSibling : target);
    });

    body.addEventListener("drop", (event) => {
      if (!dragged) {
        return;
      }
      event.preventDefault();
      const order = orderOf();
      if (order.join(",") === before) {
        return;
      }
      order.forEach((id) => {
        const input = document.createElement("input");
        input.type = "hidden";
        input.name = "rule";
        input.value = id;
        form.appendChild(input);
      });
      form.submit();
    });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
