"""gunicorn's configuration, read from the working directory (the project folder: the image's default command
and `gunicorn marketplace.wsgi:application` run there): the settings are loaded in gunicorn's master before any
worker forks, so a configuration error stops gunicorn with its one line and exit status 2
(``marketplace.startup``) instead of each worker failing at boot and being replaced, forever."""

from marketplace.startup import configure

configure()
