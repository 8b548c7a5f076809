// Behaviour of the desk's pages. The Content-Security-Policy allows no inline script or event
// handler attributes, so pages mark elements with data- attributes and this file wires them.
"use strict";

// <form data-confirm="Question?">: ask before submitting; Cancel keeps the page as it is.
document.addEventListener("submit", (event) => {
  const form = event.target;
  if (!(form instanceof HTMLFormElement) || !form.dataset.confirm) {
    return;
  }
  if (!window.confirm(form.dataset.confirm)) {
    event.preventDefault();
  }
});
