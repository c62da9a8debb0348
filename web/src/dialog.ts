/** A modal question before something that cannot be undone (cancel a batch, delete a route). */
import { h } from "./dom.js";

/** Shows `question`; resolves true when `yes` is clicked, false on "Keep" or Escape. */
export function confirmDialog(question: string, yes: string): Promise<boolean> {
  return new Promise((resolve) => {
    const dialog = h("dialog", { class: "confirm" });
    const answer = (ok: boolean) => () => dialog.close(ok ? "yes" : "no");
    dialog.append(
      h("p", {}, question),
      h(
        "div",
        { class: "dialog-buttons" },
        h("button", { class: "keep", onclick: answer(false) }, "Keep"),
        h("button", { class: "danger", onclick: answer(true) }, yes),
      ),
    );
    dialog.addEventListener("close", () => {
      resolve(dialog.returnValue === "yes");
      dialog.remove();
    });
    document.body.append(dialog);
    dialog.showModal();
  });
}
