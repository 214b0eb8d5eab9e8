"""Compare: two or more runs side by side, also while they train: metrics, curves, differing settings, per-class F1,
winners. Failed runs are not offered."""

import streamlit as st

from classifier import compare
from classifier.store import ACTIVE
from ui import state
from ui.monitor import POLL_SECONDS
from ui.widgets import STATUS_ICONS, jobs, run_label, user_errors

state.init_state()
st.title("Compare")
all_jobs = {j.run_id: j for j in jobs() if j.status in compare.COMPARABLE}
if len(all_jobs) < 2:
    st.info(
        "Comparing needs at least two runs that did not fail. Start them on **Train**; they can be compared while "
        "they train."
    )
    st.stop()

ss = st.session_state
ss["w_compare_runs"] = [i for i in ss.get("w_compare_runs", []) if i in all_jobs]  # deleted runs drop out
picked = st.multiselect(
    "Runs to compare",
    list(all_jobs),
    format_func=lambda i: f"{STATUS_ICONS.get(all_jobs[i].status, '')} {run_label(all_jobs[i])}",
    key="w_compare_runs",
    help="Finished runs and runs still training (their curves grow as they go; per-class results appear at the end).",
)
if len(picked) < 2:
    st.info("Pick two or more runs above to compare them.")
    st.stop()
polling = any(all_jobs[i].status in ACTIVE for i in picked)


@st.fragment(run_every=POLL_SECONDS if polling else None)
def comparison() -> None:
    fresh = {j.run_id: j for j in jobs()}
    chosen = [fresh[i] for i in picked if i in fresh]
    if polling and not any(j.status in ACTIVE for j in chosen):
        st.rerun()  # the whole page: draw the finished state once, then stop polling
    runs = None
    with user_errors("Cannot read these runs"):
        runs = compare.load_runs([j.run_dir for j in chosen])
    if runs is None:
        return
    for run, j in zip(runs, chosen):
        run.key = f"{j.name} #{j.run_id[-6:]}"  # what the tables and legends show
    keys = [r.key for r in runs]
    cols = st.columns(len(runs))
    for col, run, j in zip(cols, runs, chosen):
        acc = (run.metrics or {}).get("accuracy")
        col.markdown(f"**{run.key}**  \n{STATUS_ICONS.get(j.status, '')} {j.status} · {run.epochs_done} epochs"
                     + (f" · accuracy {acc:.1%}" if acc is not None else ""))  # fmt: skip
        if run.notes:
            col.caption("; ".join(run.notes))

    NUMBER = st.column_config.NumberColumn
    st.dataframe(
        compare.metrics_table(runs),
        hide_index=True,
        placeholder="—",
        column_config={"accuracy": NUMBER(format="percent"), "val loss": NUMBER(format="%.4f"),
                       **{c: NUMBER(format="%.3f") for c in ("macro F1", "ROC AUC", "ECE")}},
    )  # fmt: skip
    st.caption("Finished runs: the weights they kept (best epoch). Runs still training: their latest epoch so far.")
    st.plotly_chart(compare.curves_figure(runs), key="cmp_curves")

    st.subheader("Settings that differ")
    diff = compare.differing_settings({r.key: r.config for r in runs})
    if diff:
        st.dataframe(compare.settings_table(diff, keys), hide_index=True)
    else:
        st.caption("Every setting is the same.")

    st.subheader("Per-class F1")
    f1 = compare.per_class_f1(runs)
    if f1["no_metrics"]:
        st.info(f"No per-class results yet for {', '.join(f1['no_metrics'])}: they appear when a run finishes.")
    with_metrics = [k for k in keys if k not in f1["no_metrics"]]
    if with_metrics:
        table = compare.f1_table(f1, with_metrics)
        st.dataframe(table, hide_index=True,
                     column_config={k: st.column_config.NumberColumn(format="%.3f") for k in with_metrics})  # fmt: skip
        st.plotly_chart(compare.f1_figure(f1), key="cmp_f1")
        st.markdown("**Which run wins on which class**")
        st.markdown("\n".join(f"- {compare.winner_sentence(w)}" for w in compare.class_winners(f1)))

    st.subheader("Confusion matrices (row-normalised)")
    figs = compare.confusion_figures(runs)
    for start in range(0, len(figs), 3):
        for col, (key, fig) in zip(st.columns(3), figs[start : start + 3]):
            if fig is None:
                col.info(f"{key}: no confusion matrix yet.")
            else:
                col.plotly_chart(fig, key=f"cmp_cm_{start}_{key}")


comparison()
