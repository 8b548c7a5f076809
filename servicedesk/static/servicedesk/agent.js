// The records list: a checkbox in the header selects or clears every record of the page for
// the bulk change. Without script the boxes are ticked one by one; nothing else depends on it.
"use strict";

document.addEventListener("change", (event) => {
  const all = event.target;
  if (!(all instanceof HTMLInputElement) || !all.matches("[data-select-all]")) {
    return;
  }
  for (const box of document.querySelectorAll('input[type=checkbox][name=records]')) {
    box.checked = all.checked;
  }
});
