// The deployment page follows the end of a running log, like a terminal: new lines scroll the page to the
// bottom unless the reader scrolled up; scrolling back to the bottom follows again.
(function () {
  const log = document.getElementById("log");
  if (!log) return;
  const page = document.scrollingElement;
  const atBottom = () => page.scrollTop + window.innerHeight >= page.scrollHeight - 40;
  let following = log.hasAttribute("data-follow");
  let ours = false;  // a scroll this script made is not the reader's
  const follow = () => {
    if (!following) return;
    ours = true;
    page.scrollTop = page.scrollHeight;
  };
  window.addEventListener("scroll", () => {
    if (ours) { ours = false; return; }
    following = atBottom();
  }, { passive: true });
  new MutationObserver(follow).observe(log, { childList: true, subtree: true });
  follow();
})();
