"""The synthetic DSA generator: procedural anatomy (:mod:`.anatomy`), one series' timing and frames
(:mod:`.series`, :mod:`.hard`), the whole cohort folder (:mod:`.cohort`) and its contact sheet
(:mod:`.preview`). Of the rest of perforation_d2 it uses only the errors, the cohort writer and the output
transaction; the ``synth`` command is :mod:`perforation_d2.commands.synth`.
"""
