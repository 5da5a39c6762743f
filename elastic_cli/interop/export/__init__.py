"""`elastic export`: a run as a Hugging Face folder (writer.py, card.py). The *_elastic.py files
beside them are the code `transformers` loads from an export; they import transformers, so
nothing here imports them until an export is made."""
