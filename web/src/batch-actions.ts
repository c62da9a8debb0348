/**
 * One batch's buttons, by state: Cancel while it runs (after a confirmation);
 * Retry failed when it has failed or expired requests and may run them again;
 * Resume for a cancelled or expired batch (its cancelled, failed and expired
 * requests run again with a fresh completion window).
 */
import type { Batch } from "../../src/gen/fusillade/v1/resources_pb.js";
import { BatchState } from "../../src/gen/fusillade/v1/resources_pb.js";
import { batches, describe } from "./api.js";
import { conn, n } from "./common.js";
import { confirmDialog } from "./dialog.js";
import { h, put } from "./dom.js";

/** The actions bar of batch `id`; `update(b)` sets its buttons for `b`; `reopened` runs after a retry or resume. */
export function batchActions(
  id: string,
  reopened: () => void,
): { el: HTMLElement; update: (b: Batch) => void } {
  const act = async (fn: () => Promise<unknown>, said: string) => {
    try {
      await fn();
      conn.textContent = said;
    } catch (e) {
      conn.textContent = describe(e);
    }
  };
  const cancel = h(
    "button",
    {
      id: "cancel",
      class: "danger",
      disabled: true,
      onclick: async () => {
        const yes = await confirmDialog(
          `Cancel batch ${id.slice(0, 8)}? Its pending requests end at once as cancelled and those running are stopped. Resume runs them again later.`,
          "Cancel batch",
        );
        if (yes) await act(() => batches.cancelBatch({ batchId: id }), "cancelling");
      },
    },
    "Cancel…",
  );
  // Retry and Resume: RetryBatch, then the page watches the reopened batch.
  const reopen = (buttonId: string, label: string, resume: boolean, said: string) =>
    h(
      "button",
      {
        id: buttonId,
        hidden: true,
        onclick: () =>
          void act(async () => {
            await batches.retryBatch({ batchId: id, resume });
            reopened();
          }, said),
      },
      label,
    );
  const retry = reopen("retry", "Retry failed", false, "failed requests sent back to pending");
  const resume = reopen("resume", "Resume", true, "resumed");
  const el = h("div", { class: "actions" });
  put(el, cancel, retry, resume);
  const update = (b: Batch) => {
    const c = b.counts;
    const again = n(c?.failed) + n(c?.expired);
    cancel.disabled = b.state !== BatchState.IN_PROGRESS;
    cancel.title = cancel.disabled ? "only a running batch can be cancelled" : "";
    retry.hidden =
      again === 0 || (b.state !== BatchState.IN_PROGRESS && b.state !== BatchState.COMPLETED);
    resume.hidden = b.state !== BatchState.CANCELLED && b.state !== BatchState.EXPIRED;
    resume.disabled = again + n(c?.canceled) === 0;
  };
  return { el, update };
}
