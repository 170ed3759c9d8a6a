"""The CLI's parts that are not commands: how objects are printed (kubectl's ``-o``
forms and label selectors) and shell completion.  ``cozybackup_core.cli`` holds the
commands."""
