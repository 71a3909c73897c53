// A risky action's form says what will happen (data-confirm); nothing is sent unless the reader agrees.
document.addEventListener("submit", (event) => {
  const message = event.target.dataset && event.target.dataset.confirm;
  if (message && !window.confirm(message)) event.preventDefault();
});
