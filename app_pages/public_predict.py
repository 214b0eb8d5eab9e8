"""The public prediction page: the one published model, for visitors who are not signed in. Nothing else is shown
here: no other run, no dataset, no server path; per-session limits on images per prediction and predictions."""

import logging

import streamlit as st

from classifier.access import read_access
from classifier.errors import ClassifierError
from classifier.public import check_public_request, published
from ui.cache import loaded_run
from ui.ensemble import loaded_ensemble_dir
from ui.predict import predict_section
from ui.widgets import literal

REQUESTS = "_public_requests"  # the upload sets this session has had predicted (each set counts once)
st.title("Try the model")
record = published()
if record is None:
    st.info("No model is published at the moment.")
    st.stop()
try:
    ensemble = record["kind"] == "ensemble"
    run = loaded_ensemble_dir(record["dir"], record["name"]) if ensemble else loaded_run(record["dir"])
except ClassifierError:  # the message would name server folders: log it, show none of it
    logging.getLogger("classifier.app").exception("the published model %s cannot be loaded", record.get("id"))
    st.error("The published model cannot be loaded right now; please try again later.", icon="🚫")
    st.stop()
quotas = read_access().quotas
st.markdown(f"**{literal(record['name'])}** recognises {len(run.class_names)} classes: "
            f"{literal(', '.join(run.class_names))}.")  # fmt: skip
seen = st.session_state.setdefault(REQUESTS, [])
st.caption(f"Up to {quotas.public_images_per_request} images per prediction and "
           f"{quotas.public_requests_per_session} predictions per visit ({len(seen)} used).")  # fmt: skip


def count_request(files: tuple, n_images: int) -> None:
    """The session's limits, checked just before the model runs: a new set of images is one more prediction (a
    rerun with the same images, e.g. another top-k, is not), and a refused set does not count."""
    if list(files) in seen:
        return
    check_public_request(len(seen), n_images, quotas)
    seen.append(list(files))


try:
    predict_section(run, "public", before_predict=count_request)
except ClassifierError as e:  # a limit: says which, nothing else
    st.error(literal(str(e)), icon="🚫")
