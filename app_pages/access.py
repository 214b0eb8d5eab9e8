"""Access (admins): who may do what (the access file), the quotas, each user's runs and disk, and the published
model. The access file is edited on the server; this page reads it."""

from collections import Counter

import pandas as pd
import streamlit as st

from classifier.access import owner_of, read_access
from classifier.data.ingest import dataset_owner, workspace_datasets
from classifier.jobs.guard import disk_used
from classifier.public import published, unpublish
from classifier.store import ACTIVE
from ui import state
from ui.access import current_user
from ui.cache import executor
from ui.widgets import literal, user_errors

state.init_state()
st.title("Access")
rules = None
with user_errors("The access file cannot be read"):
    rules = read_access()
if rules is None:
    st.stop()
st.caption(f"Access file: {rules.path or 'none yet (everyone signed in is a ' + rules.default + ')'}. "
           f"A signed-in address listed nowhere gets: {rules.default}.")  # fmt: skip
rows = [{"who": who, "kind": "address", "role": role} for who, role in rules.users.items()]
rows += [{"who": "@" + who, "kind": "domain", "role": role} for who, role in rules.domains.items()]
st.dataframe(pd.DataFrame(rows, columns=["who", "kind", "role"]), hide_index=True)

st.subheader("Quotas and use")
st.dataframe(pd.DataFrame([vars(rules.quotas)]), hide_index=True)
everything = executor().list()  # an admin's list: every run
active = Counter(owner_of(j) for j in everything if j.status in ACTIVE)
owners = sorted({owner_of(j) for j in everything} | {dataset_owner(d) or "local" for d in workspace_datasets()})
st.dataframe(
    pd.DataFrame(
        [
            {
                "user": o,
                "queued or running": active.get(o, 0),
                "disk (MB)": round(disk_used(o, executor().inner) / 1e6, 1),
            }
            for o in owners
        ]  # fmt: skip
    ),
    hide_index=True,
)

st.subheader("Public prediction page")
public = published()
if public is None:
    st.caption("Nothing is published. Trainers publish a completed run or saved ensemble on the Runs page.")
else:
    st.markdown(f"**{literal(public['name'])}** ({public['kind']}), published by {literal(public['by'])}.")
    if st.button("Unpublish", icon=":material/public_off:", key="b_unpublish_admin"):
        with user_errors("Cannot unpublish"):
            unpublish(current_user())
            st.rerun()
