// Copy buttons beside the export and load commands; empty search fields are left out of the URL.
document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll("button.copy").forEach(function (button) {
    button.addEventListener("click", function () {
      var text = button.parentElement.querySelector("pre").textContent;
      if (navigator.clipboard) {
        navigator.clipboard.writeText(text).then(function () { button.textContent = "copied"; },
                                                 function () { button.textContent = "select and copy"; });
      }
    });
  });
  var form = document.getElementById("search-form");
  if (form) {
    form.addEventListener("submit", function () {
      form.querySelectorAll("input").forEach(function (input) {
        if (!input.value.trim()) { input.disabled = true; }
      });
    });
  }
});
