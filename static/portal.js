// A region that scrolls (a wide table on a phone, a long log) must be reachable by keyboard (WCAG 2.1.1):
// such regions get a tab stop, on load and whenever htmx swaps in new content.
(function () {
  function markScrollable(root) {
    for (const region of root.querySelectorAll(".card, pre")) {
      const scrolls = region.scrollWidth > region.clientWidth || region.scrollHeight > region.clientHeight;
      if (scrolls && !region.hasAttribute("tabindex")) region.tabIndex = 0;
    }
  }
  document.addEventListener("DOMContentLoaded", function () { markScrollable(document); });
  document.addEventListener("htmx:afterSettle", function (event) { markScrollable(event.target.parentElement || document); });
  window.addEventListener("resize", function () { markScrollable(document); });
})();
